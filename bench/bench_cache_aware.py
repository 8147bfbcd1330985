"""(d) cache_aware vs round_robin on a shared-prefix workload: mean TTFT, prefix hit rate.

4 replicas whose prefill costs ``--prefill-ms-per-token`` per uncached prompt token (with a
prefix cache of real chained page hashes) and whose decode step is 14 ms. The workload:
``--groups`` system prompts of ``--prefix`` tokens, each request one of them plus a short
unique suffix, arriving from ``--concurrency`` users. Each policy gets fresh replicas.

    .venv/bin/python bench/bench_cache_aware.py [--requests 160] [--prefix 512]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router import Processes, drive  # noqa: E402

from ttdist.runtime.scripted_engine import ScriptedEngineConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--prefix", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--prefill-ms-per-token", type=float, default=0.2)
    args = ap.parse_args()
    cfg = ScriptedEngineConfig(vocab_size=1000, step_s=0.014, prefill_s_per_token=args.prefill_ms_per_token / 1000,
                               page_size=32, num_pages=4096)

    def prompt(i: int) -> list[int]:
        g = random.Random(i).randrange(args.groups)   # not in step with round robin
        prefix = [(g * 7919 + j * 31) % 997 + 1 for j in range(args.prefix)]
        return prefix + [(i * 13 + j) % 997 + 1 for j in range(16)]

    results = {}
    for policy in ("round_robin", "cache_aware"):
        procs = Processes(args.replicas, cfg, policy, replica_procs=1)
        try:
            results[policy] = asyncio.run(
                drive([f"127.0.0.1:{procs.router_port}"], args.requests, args.concurrency, 8, prompts=prompt)
            )
        finally:
            procs.close()
    print(f"shared-prefix workload: {args.requests} requests, {args.groups} prefixes of {args.prefix} tokens, "
          f"{args.replicas} replicas, prefill {args.prefill_ms_per_token} ms/uncached token, {args.concurrency} users")
    print(f"{'policy':<14}{'mean TTFT ms':>14}{'p50 TTFT ms':>13}{'requests/s':>12}")
    for policy, r in results.items():
        print(f"{policy:<14}{1000 * statistics.mean(r.ttft):>14.1f}{r.ttft_p50_ms():>13.1f}{r.rps:>12.1f}")
    ratio = statistics.mean(results["round_robin"].ttft) / statistics.mean(results["cache_aware"].ttft)
    print(f"cache_aware mean TTFT is {ratio:.2f}x lower than round_robin")


if __name__ == "__main__":
    main()
