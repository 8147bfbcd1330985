"""Cold start: from a scale-up decision to the new replica serving, phase by phase.

``tiny`` and ``smollm2``: a local Ray cluster whose pool has ``min_replicas: 0`` (weights
converted once at launch, into the converted-weight cache); each start is a request sent to
the empty pool, so the autoscaler decides at once and the replica it starts is timed by the
coordinator (``ColdStart``: Ray placement, process start, weight load from the node-local
cache, KV sizing, engine start, registration). Warm-up is the first request's engine-side time
to first token on the new replica (from the moment it served) minus a second request's. The pool idles back to no replica
between starts; the first start of a run pays Ray's worker-pool start too.

``llama70b-2l``: a 2-layer checkpoint of Llama-3.1-70B's shapes (bench_weights.py writes it,
~7.6 GB bf16) converted for ``tg`` at bfloat8_b, then loaded as a replica's engine loads it
(the cache entry, ``MeshModelRunner``) on the simulator's 8x4 mesh with shape-only storage
(``--sim-device meta``: float32 stores of 70B shapes do not fit a small host), in a child
process: the weight-load and KV-sizing phases. The Ray phases do not depend on the model:
take them from the runs above.

    .venv/bin/python bench/bench_cold_start.py --model tiny --starts 3
    .venv/bin/python bench/bench_cold_start.py --model smollm2 --starts 2
    .venv/bin/python bench/bench_cold_start.py --model llama70b-2l
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PHASES = ("placement_s", "process_start_s", "weight_load_s", "kv_sizing_s", "engine_start_s", "registration_s")


def cluster_starts(model: str, mesh: str, starts: int, work: Path) -> list[dict]:
    import grpc
    import ray

    from ttdist.router.deploy import deploy, get_within, wait_serving
    from ttdist.runtime.autoscale.config import AutoscaleConfig
    from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup
    from ttdist.v1 import generation_pb2 as pb
    from ttdist.v1 import generation_pb2_grpc as pb_grpc

    config = ClusterConfig(model=model, groups=(ReplicaGroup(mesh=mesh),), port=0, dashboard_port=None,
                           max_kv_pages=64, weights_cache=str(work / "weights"), health=HealthConfig(heartbeat_s=0.25),
                           autoscale=AutoscaleConfig(min_replicas=0, max_replicas=1, target=8, upscale_delay_s=0,
                                                     downscale_delay_s=1))
    deployment = deploy(config)
    rows = []
    try:
        wait_serving(deployment, 60)
        channel = grpc.insecure_channel(deployment.address)
        stub = pb_grpc.GenerationStub(channel)

        def ttft(prompt) -> float:
            req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), sampling=pb.SamplingParams(max_tokens=4),
                                     stream=False)
            for resp in stub.Generate(req, timeout=600):
                if resp.WhichOneof("kind") == "complete":
                    return resp.complete.timings.ttft_seconds
            raise RuntimeError("no Complete")

        for i in range(starts):
            sent = time.time()
            first = ttft([11 + i, 12, 13, 14])   # waits for the replica its arrival makes the pool start
            warm = ttft([21 + i, 22, 23, 24])
            status = get_within(deployment.coordinator.autoscale_status.remote(), 60, "autoscale_status()")
            took, decided = status.cold_starts[-1], status.decisions[-1].time
            row = {k: getattr(took, k) for k in PHASES}
            serving = decided + took.total_s   # the first token came this long after the replica served
            row.update(total_s=took.total_s, warm_up_s=max(0.0, sent + first - serving - warm),
                       weights_via=took.weights_via)
            rows.append(row)
            print(f"start {i + 1}: " + "  ".join(f"{k[:-2]} {v:.2f}" for k, v in row.items() if k.endswith("_s")),
                  flush=True)
            while get_within(deployment.coordinator.replicas.remote(), 60, "replicas()"):   # idle back to none
                time.sleep(0.2)
        channel.close()
    finally:
        deployment.shutdown()
        if ray.is_initialized():
            ray.shutdown()
    return rows


LOAD_70B = """
import json, sys, time
from ttdist.model.runner import MeshModelRunner
from ttdist.model.weights import load_converted
entry, precision = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
weights = load_converted(entry, precision=precision)
opened = time.perf_counter() - t0
runner = MeshModelRunner(weights, backend="sim", max_batch=32, max_context=4096, max_pages=10**9,
                         backend_options={"device": "meta"})
print(json.dumps({"open_s": opened, "weight_load_s": runner.load_times.weight_load_s,
                  "kv_sizing_s": runner.load_times.kv_sizing_s, "pages": runner.info.num_pages}))
"""


def llama70b_phases(work: Path) -> dict:
    from bench_weights import run_child, write_checkpoint

    ckpt, cache = work / "llama70b-shaped", work / "cache"
    t0 = time.perf_counter()
    nbytes = write_checkpoint(ckpt, 2, 4)
    print(f"checkpoint: 2 layers of Llama-3.1-70B shapes, {nbytes / 1e9:.2f} GB bf16, written in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    cli = [sys.executable, "-c", "import sys; from ttdist.cli import main; sys.exit(main())", "convert", str(ckpt),
           "--mesh", "tg", "--dtype", "bfloat8_b", "--cache-dir", str(cache), "--no-progress"]
    seconds, _, out = run_child(cli)
    print(f"converted once for tg at bfloat8_b in {seconds:.1f} s (before any replica starts)", flush=True)
    entry = out.strip().splitlines()[-1]
    _, rss, out = run_child([sys.executable, "-c", LOAD_70B, entry, "bfloat8_b"])
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_rss_gb"] = rss
    return row


def summary(rows: list[dict]) -> None:
    keys = [*PHASES, "total_s", "warm_up_s"]
    print("median of " + str(len(rows)) + " start(s): " + "  ".join(
        f"{k[:-2]} {statistics.median(r[k] for r in rows):.2f} s" for k in keys))
    if len(rows) > 1:
        print("median after the first: " + "  ".join(
            f"{k[:-2]} {statistics.median(r[k] for r in rows[1:]):.2f} s" for k in keys))
    print(f"weights read via: {', '.join(sorted({r['weights_via'] for r in rows}))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("tiny", "smollm2", "llama70b-2l"), default="tiny")
    ap.add_argument("--mesh", default="1x1", help="the replica's mesh (tiny, smollm2)")
    ap.add_argument("--starts", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cold-start-", dir="/tmp"))
    try:
        if args.model == "llama70b-2l":
            r = llama70b_phases(work)
            print(f"llama70b-2l on sim 8x4 (shape-only stores): open cache entry {r['open_s']:.2f} s, weight load "
                  f"{r['weight_load_s']:.2f} s, KV sizing {r['kv_sizing_s']:.2f} s ({r['pages']} pages), peak RSS "
                  f"{r['peak_rss_gb']:.1f} GB")
            return
        if args.model == "tiny":
            from ttdist.model.testing import tiny_llama_checkpoint

            model = str(tiny_llama_checkpoint(work / "tiny-llama", seed=3))
        else:
            model = "smollm2"
        rows = cluster_starts(model, args.mesh, args.starts, work)
        print(f"{args.model} on sim {args.mesh}:")
        summary(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
