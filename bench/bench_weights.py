"""Weights at 70B scale: streaming conversion, per-device shards, the DRAM ledger and KV budget.

Writes a checkpoint with Llama-3.1-70B's real tensor shapes and ``--layers`` decoder layers
(random bf16, ``--files`` safetensors files + ``model.safetensors.index.json``), then, each in
a child process whose peak RSS (``ru_maxrss``) is measured:

1. ``ttdist convert --mesh tg --dtype bfloat8_b`` (time, GB/s, peak RSS vs the target
   ``1.5 x largest tensor + 1 GB``), and the same command again (a cache hit: identity only);
2. loading one replica's shards onto the simulator's 8x4 mesh at the chosen precision, the KV
   cache sized from the simulator's own DRAM ledger (``--sim-device meta`` keeps the sim's
   float32 stores shape-only, so a 70B-shaped model loads on a small host; ``cpu`` stores them);

and prints the per-chip DRAM ledger of the N-layer model and its extrapolation to 80 layers
(does 70B fit a Galaxy, KV pages, users x context).

    python bench/bench_weights.py --layers 2            # ~7.6 GB checkpoint + ~7.6 GB cache
    python bench/bench_weights.py --layers 1 --keep     # smaller; keep the files
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ttdist.model.weights.safetensors_file import BF16, ShardFileWriter  # noqa: E402

LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 8192,
    "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072, "tie_word_embeddings": False,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
FULL_LAYERS = 80
GB = 1e9
CHUNK = 1 << 25  # elements per random chunk


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    from ttdist.model.config import LlamaConfig
    from ttdist.model.weights import expected_shapes

    return expected_shapes(LlamaConfig.from_dict(cfg))


class RandomBf16:
    """Random bf16 bits, fast: one pool of random values (random sign and mantissa, exponent
    2^-11..2^-8; norms around 1.0), each chunk a slice at a random offset."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        raw = np.frombuffer(self.rng.bytes(4 * CHUNK), np.uint16)
        exponent = (116 + ((raw >> 7) & 3)).astype(np.uint16) << 7
        self.pool = ((raw & 0x807F) | exponent).view(BF16)
        self.norms = ((raw & 0x007F) | 0x3F80).view(BF16)

    def take(self, n: int, norm: bool) -> np.ndarray:
        pool = self.norms if norm else self.pool
        start = int(self.rng.integers(0, pool.size - n + 1))
        return pool[start : start + n]


def write_checkpoint(path: Path, layers: int, files: int, seed: int = 0) -> int:
    cfg = dict(LLAMA_70B, num_hidden_layers=layers)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    shapes = tensor_shapes(cfg)
    sizes = {n: int(np.prod(s)) * 2 for n, s in shapes.items()}
    target = sum(sizes.values()) / files
    groups: list[list[str]] = [[]]
    acc = 0
    for name in shapes:  # in checkpoint order, cut into files of about equal bytes
        if acc >= target and len(groups) < files:
            groups.append([])
            acc = 0
        groups[-1].append(name)
        acc += sizes[name]
    rng = RandomBf16(seed)
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        w = ShardFileWriter(path / file, {n: (BF16, shapes[n]) for n in group})
        for name in group:
            total = int(np.prod(shapes[name]))
            for start in range(0, total, CHUNK):
                n = min(CHUNK, total - start)
                w.write(name, rng.take(n, "norm" in name), start * 2)
            weight_map[name] = file
        w.close()
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": sum(sizes.values())},
                                                                   "weight_map": weight_map}))
    return sum(sizes.values())


def run_child(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in GB from the child's own ru_maxrss, stdout) of a child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode:
            sys.exit(f"child failed ({proc.returncode}): {' '.join(args)}\n{err.read()[-3000:]}")
        return seconds, usage.ru_maxrss * 1024 / GB, out.read()


LOAD = """
import json, resource, sys, time
from ttdist.model.runner import MeshModelRunner
from ttdist.model.weights import load_converted
entry, precision, device, max_pages = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
weights = load_converted(entry, precision=precision)
runner = MeshModelRunner(weights, backend="sim", max_batch=32, max_context=4096, max_pages=max_pages or 10**9,
                         backend_options={"device": device})
fit, dram = runner.kv_fit, runner.dram()
led = runner.backend.dram.by_name
top = sum(v for k, v in led.items() if k.startswith("weights.") and not k.startswith("weights.layers."))
print(json.dumps({"seconds": time.perf_counter() - t0, "dram": dram.__dict__, "top_weight_bytes": top,
                  "layer_weight_bytes": dram.weights - top, "page_bytes": fit.page_bytes, "reserve": fit.reserve_bytes,
                  "pages_budget": fit.pages_budget, "num_pages": fit.num_pages, "capped": fit.capped_by_host,
                  "layers": weights.config.num_hidden_layers, "user_groups": runner.info.user_groups}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--mesh", default="tg")
    ap.add_argument("--dtype", default="bfloat8_b", help="precision to convert and load at (a dtype or a preset)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir under /tmp)")
    ap.add_argument("--sim-device", default="meta", help="meta (shapes only) or cpu (the sim stores float32 in host RAM)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and cache")
    args = ap.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-weights-", dir="/tmp"))
    need = 2 * 2 * (2 * 128256 * 8192 + args.layers * 856_686_592)  # checkpoint + cache, bf16
    free = shutil.disk_usage(work).free
    if free < need * 1.1:
        sys.exit(f"{work}: {free / GB:.1f} GB free, {need / GB:.1f} GB needed for {args.layers} layers: use fewer --layers")
    ckpt, cache = work / "llama70b-shaped", work / "cache"
    try:
        t0 = time.perf_counter()
        nbytes = write_checkpoint(ckpt, args.layers, args.files)
        print(f"checkpoint: {args.layers} layers of Llama-3.1-70B shapes, {nbytes / GB:.2f} GB bf16 in {args.files} files "
              f"+ index, written in {time.perf_counter() - t0:.1f} s")
        largest = 128256 * 8192 * 2
        cli = [sys.executable, "-c", "import sys; from ttdist.cli import main; sys.exit(main())", "convert", str(ckpt), "--mesh", args.mesh, "--dtype", args.dtype,
               "--cache-dir", str(cache), "--no-progress"]
        seconds, rss, out = run_child(cli)
        target = 1.5 * largest / GB + 1.0
        print(f"convert --mesh {args.mesh} --dtype {args.dtype}: {seconds:.1f} s, {nbytes / GB / seconds:.2f} GB/s, "
              f"peak RSS {rss:.2f} GB (target <= 1.5 x largest tensor {largest / GB:.2f} GB + 1 GB = {target:.2f} GB: "
              f"{'met' if rss <= target else 'MISSED'})")
        entry = out.strip().splitlines()[-1]
        again, rss2, _ = run_child(cli)
        print(f"convert again (cache hit, identity from config + headers + sizes + mtimes): {again:.2f} s, peak RSS {rss2:.2f} GB")
        seconds, rss, out = run_child([sys.executable, "-c", LOAD, entry, args.dtype, args.sim_device, "0"])
        r = json.loads(out.strip().splitlines()[-1])
        report(r, seconds, rss, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def report(r: dict, seconds: float, rss: float, args) -> None:
    d = r["dram"]
    print(f"load one replica's shards onto sim {args.mesh} (device {args.sim_device}) at {args.dtype}: {seconds:.1f} s, "
          f"peak RSS {rss:.2f} GB")
    print(f"per-chip DRAM ledger, {r['layers']} layers: capacity {d['capacity'] / GB:.2f} GB, weights {d['weights'] / GB:.3f} GB "
          f"(embedding + LM head + norm {r['top_weight_bytes'] / GB:.3f}, layers {r['layer_weight_bytes'] / GB:.3f}), "
          f"KV {d['kv_cache'] / GB:.3f} GB ({r['num_pages']} pages; budget {r['pages_budget']}), other {d['other'] / GB:.4f} GB, "
          f"free {(d['capacity'] - d['weights'] - d['kv_cache'] - d['other']) / GB:.3f} GB")
    per_layer = r["layer_weight_bytes"] / r["layers"]
    page_layer = r["page_bytes"] / r["layers"]
    weights80 = r["top_weight_bytes"] + FULL_LAYERS * per_layer
    room = d["capacity"] - weights80 - r["reserve"] - d["other"]
    pages80 = int(room // (page_layer * FULL_LAYERS)) - 1 if room > 0 else 0
    groups = r.get("user_groups", 1)   # each column group's chips hold their own users' pages
    per_user = pages80 * 32                # one user's pages lie in one group
    tokens = per_user * groups
    fits = pages80 > 0
    print(f"80 layers (extrapolated from the ledger): weights {weights80 / GB:.2f} GB per chip of {d['capacity'] / GB:.2f} GB "
          f"-> {'FITS' if fits else 'DOES NOT FIT'} a Galaxy at {args.dtype}; KV {page_layer * FULL_LAYERS / 1e6:.2f} MB per page "
          f"per chip, {pages80} pages per chip x {groups} user groups = {tokens:,} tokens per replica "
          f"(reserve {r['reserve'] / GB:.2f} GB)")
    if fits:
        users = ", ".join(f"{groups * (per_user // ctx)} users x {ctx // 1024}K" for ctx in (4096, 32768, 131072) if ctx <= per_user)
        print(f"  users x context: {users}")


if __name__ == "__main__":
    main()
