"""(a) Serving overhead: the same workload on the in-process engine and through router + replica.

Both sides run the same model on the same simulated mesh with one torch thread: the
in-process ``AsyncEngine`` called directly, and a one-replica Ray cluster (coordinator,
replica actor, router actor) called over gRPC. Prints throughput loss and added TTFT
(targets: <= 5 % and <= 5 ms at p50).

    .venv/bin/python bench/bench_serving.py [--model tiny|smollm2|PATH] [--requests 32] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench_router import LoadResult, drive  # noqa: E402


def prompts(n: int, length: int):
    return lambda i: [(i * 131 + j * 7) % 40000 + 100 for j in range(length)]


async def in_process(path: str, args) -> LoadResult:
    import torch

    from ttdist.engine import AsyncEngine, EngineConfig, GenerationRequest, SamplingParams
    from ttdist.engine.tokenizer import Tokenizer
    from ttdist.model.runner import MeshModelRunner

    torch.set_num_threads(1)
    runner = MeshModelRunner.from_checkpoint(path, mesh="1x1", num_pages=args.pages, max_batch=32,
                                             cache_dir=args.cache)
    engine = AsyncEngine(runner, Tokenizer.from_dir(path), EngineConfig(max_batch=32))
    engine.start()
    make = prompts(args.requests, args.prompt)
    counter = iter(range(args.requests))
    ttft, tokens = [], [0]

    async def user():
        for i in counter:
            req = GenerationRequest(f"r{i}", prompt_token_ids=make(i),
                                    sampling=SamplingParams(max_tokens=args.max_tokens, ignore_eos=True))
            start = time.perf_counter()
            first = True
            async for out in engine.generate(req):
                if out.token_ids and first:
                    ttft.append(time.perf_counter() - start)
                    first = False
                tokens[0] += len(out.token_ids)

    t0 = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(args.concurrency)))
    seconds = time.perf_counter() - t0
    engine.shutdown()
    return LoadResult(args.requests, tokens[0], seconds, ttft)


def served(path: str, args) -> LoadResult:
    from ttdist.router.deploy import deploy, wait_serving
    from ttdist.runtime.config import ClusterConfig, ReplicaGroup

    config = ClusterConfig(model=path, groups=(ReplicaGroup(),), port=0, dashboard_port=None,
                           max_kv_pages=args.pages, weights_cache=args.cache)
    deployment = deploy(config)
    try:
        wait_serving(deployment)
        target = [deployment.address]
        asyncio.run(drive(target, 4, 2, 4, prompts=prompts(4, args.prompt)))  # warm up
        return asyncio.run(drive(target, args.requests, args.concurrency, args.max_tokens,
                                 prompts=prompts(args.requests, args.prompt)))
    finally:
        deployment.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--pages", type=int, default=128)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ttdist-bench-")
    args.cache = str(Path(tmp) / "weights")
    if args.model == "tiny":
        from ttdist.model.testing import tiny_llama_checkpoint

        path = str(tiny_llama_checkpoint(Path(tmp) / "tiny-llama", num_hidden_layers=4, hidden_size=256,
                                         intermediate_size=512, num_attention_heads=8, num_key_value_heads=4))
    elif args.model == "smollm2":
        from ttdist.model.smollm2 import materialize

        path = str(materialize())
    else:
        path = args.model
    asyncio.run(in_process(path, args))  # warm up (weights converted, code paths compiled)
    base = asyncio.run(in_process(path, args))
    net = served(path, args)
    print(f"serving overhead: model {args.model}, 1x1 sim mesh, {args.requests} requests x {args.max_tokens} tokens, "
          f"prompt {args.prompt}, {args.concurrency} concurrent")
    print(f"{'path':<28}{'tokens/s':>10}{'TTFT p50 ms':>13}")
    for name, r in (("in-process engine", base), ("router + replica (Ray, gRPC)", net)):
        print(f"{name:<28}{r.tps:>10.1f}{r.ttft_p50_ms():>13.2f}")
    loss = 100 * (1 - net.tps / base.tps)
    print(f"throughput loss {loss:.1f} % (target <= 5 %), added TTFT p50 {net.ttft_p50_ms() - base.ttft_p50_ms():.2f} ms "
          f"(target <= 5 ms)")


if __name__ == "__main__":
    main()
