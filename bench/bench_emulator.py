"""Decode step time of the ttnn backend on emulated chips against the torch simulator.

Both run the same random Llama (the layout the checkpoint's mesh gives it) through
``MeshModelRunner`` with every decode slot busy (batch ``--batch``); the emulated backend runs
eagerly and traced (one compile step, one captured, then replays). Prints the median step
time of each and the ratio to the simulator (the target: at most 3x at batch 32).

    python bench/bench_emulator.py                      # tiny Llama on n300
    python bench/bench_emulator.py --mesh tg --shape smollm2 --steps 10
    python bench/bench_emulator.py --accuracy --mesh n300   # SmolLM2 teacher-forced accuracy

``--accuracy``: SmolLM2-135M, teacher forced over 512 positions of ``tests/model/data/lighthouse.txt``
(one prefill; every position predicts the next token from the true text before it), top-1 / top-5
agreement of the greedy token with transformers' float32 top-5, counted as tt_transformers counts
it (``ttdist.model.token_accuracy``); at the ``accuracy`` and ``performance`` presets and float32
weights (KV cache bf16), simulator beside emulator. ``bench/bench_accuracy.py`` adds the ceilings,
the attribution to tensor groups and tt_transformers' decode schedule.

On a shared host pin both sides to one thread (``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``):
with more BLAS threads than free cores, numpy's small matmuls wait on each other (27x slower
on a loaded 2-core machine) and the comparison says nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttdist.mesh import ttnn_emu  # noqa: E402

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32),
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, rope_theta=100000.0, tie_word_embeddings=True),
}


def _runner(weights, backend: str, batch: int, trace: bool | None):
    from ttdist.model.runner import MeshModelRunner

    kw = {} if backend == "sim" else {"trace_decode": trace}
    return MeshModelRunner(weights, backend=backend, page_size=32, num_pages=4 * batch, max_batch=batch, max_context=512, **kw)


def _time_decode(runner, batch: int, steps: int) -> float:
    from ttdist.engine.runner import DecodeInput, SamplingSpec

    tables = [[4 * u, 4 * u + 1, 4 * u + 2, 4 * u + 3] for u in range(batch)]
    for u, table in enumerate(tables):
        runner.prefill_logits([1 + (u % 7)] * 20, 0, table)
    times = []
    for step in range(steps + 2):
        inp = DecodeInput([3 + step] * batch, [20 + step] * batch, tables, [SamplingSpec()] * batch,
                          seq_ids=[f"u{u}" for u in range(batch)])
        start = time.perf_counter()
        runner.decode(inp)
        times.append(time.perf_counter() - start)
    runner.close()
    return float(np.median(times[2:]))  # past the compile and capture steps


def _accuracy(mesh: str, positions: int = 512) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from ttdist.model.runner import MeshModelRunner
    from ttdist.model.smollm2 import materialize
    from ttdist.model.token_accuracy import reference_top5, token_accuracy

    path = materialize()
    text = Path(__file__).resolve().parents[1] / "tests" / "model" / "data" / "lighthouse.txt"
    ids = AutoTokenizer.from_pretrained(path)(text.read_text()).input_ids[:positions]
    with torch.no_grad():
        want = reference_top5(LlamaForCausalLM.from_pretrained(path).float().eval()(torch.tensor([ids])).logits[0].numpy())
    from ttdist.mesh import parse_mesh

    groups = 4 if parse_mesh(mesh).rows > 1 else 1
    pages = -(-positions // 32)
    for dtype in ("float32", "accuracy", "performance"):
        row = []
        for backend in ("sim", "ttnn"):
            kv = "bfloat16" if dtype == "float32" else None  # paged SDPA decode takes no float32 cache
            runner = MeshModelRunner.from_checkpoint(path, mesh=mesh, backend=backend, dtype=dtype, kv_dtype=kv, page_size=32,
                                                     num_pages=(pages + 1) * groups, max_batch=groups, max_context=positions + 32)
            got = token_accuracy(runner.model.prefill_all_logits(ids, list(range(pages))).argmax(-1), want)
            row.append(f"{backend} top-1 {got.top1:.1%} top-5 {got.top5:.1%}")
        print(f"smollm2 on {mesh}, {dtype}, {len(want)} positions: " + ", ".join(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", default="n300")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat8_b")
    parser.add_argument("--accuracy", action="store_true", help="SmolLM2 teacher-forced top-1 / top-5 instead of step time")
    args = parser.parse_args()
    ttnn_emu.install()
    if args.accuracy:
        return _accuracy(args.mesh)
    from ttdist.mesh import parse_mesh
    from ttdist.mesh.precision import DType
    from ttdist.model.config import LlamaConfig
    from ttdist.model.weights import expected_shapes, prepare

    spec = parse_mesh(args.mesh)
    config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=512)
    rng = np.random.default_rng(0)
    hf = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in expected_shapes(config).items()}
    weights = prepare(config, hf, spec, DType.parse(args.dtype))
    sim = _time_decode(_runner(weights, "sim", args.batch, None), args.batch, args.steps)
    eager = _time_decode(_runner(weights, "ttnn", args.batch, False), args.batch, args.steps)
    traced = _time_decode(_runner(weights, "ttnn", args.batch, True), args.batch, args.steps)
    print(f"{args.shape} on {args.mesh}, batch {args.batch}, {args.dtype}: decode step median "
          f"sim {sim * 1e3:.1f} ms, emulated eager {eager * 1e3:.1f} ms ({eager / sim:.2f}x), traced {traced * 1e3:.1f} ms "
          f"({traced / sim:.2f}x)")


if __name__ == "__main__":
    main()
