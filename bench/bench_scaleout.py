"""(c) Scale-out: 1..16 replicas whose decode step takes a fixed 14 ms (a TT Galaxy decode
step), 32 users each, all through one router: aggregate tokens/s and efficiency vs linear.

Replicas are scripted engines (sleep-timed steps, batch 32), so the figure isolates what the
serving stack (one router process, gRPC, per-token streaming) costs as replicas are added.
Linear = N x the 1-replica figure; the ideal per replica is 32 tokens / 14 ms = 2286 tok/s.

    .venv/bin/python bench/bench_scaleout.py [--replicas 1,2,4,8,16] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router import Processes, drive  # noqa: E402

from ttdist.runtime.scripted_engine import ScriptedEngineConfig  # noqa: E402

STEP_S = 0.014
USERS = 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", default="1,2,4,8,16")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    cfg = ScriptedEngineConfig(vocab_size=1000, step_s=STEP_S, max_batch=USERS)
    rows = []
    for n in [int(x) for x in args.replicas.split(",")]:
        procs = Processes(n, cfg, "least_load", replica_procs=min(n, 4))
        try:
            r = asyncio.run(drive([f"127.0.0.1:{procs.router_port}"], 10**9, n * USERS, args.max_tokens,
                                  duration_s=args.seconds))
        finally:
            procs.close()
        rows.append((n, r))
    base = rows[0][1].tps / rows[0][0]
    print(f"scale-out: {USERS} users per replica, {STEP_S * 1000:.0f} ms decode step, one router, "
          f"{args.seconds:.0f} s per point (ideal {USERS / STEP_S:.0f} tok/s per replica)")
    print(f"{'replicas':>8}{'users':>7}{'tokens/s':>11}{'linear':>10}{'efficiency':>12}{'TTFT p50 ms':>13}")
    for n, r in rows:
        linear = base * n
        print(f"{n:>8}{n * USERS:>7}{r.tps:>11.0f}{linear:>10.0f}{100 * r.tps / linear:>11.1f}%{r.ttft_p50_ms():>13.1f}")


if __name__ == "__main__":
    main()
