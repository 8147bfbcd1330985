"""(c) Scale-out: 1..16 replicas whose decode step takes a fixed 14 ms (a TT Galaxy decode
step), 32 users each: the same load sent straight to the replicas and through 1 and 2 routers.

Replicas are scripted engines (sleep-timed steps, batch 32), so the figure isolates what the
serving stack (router processes, gRPC, streaming) costs as replicas are added. Efficiency =
tokens/s through the routers / tokens/s sent direct, measured in the same run with the same
load generator (one process, one client connection per replica on every side; with 2
routers the connections alternate between them), sides alternating in short rounds. At half load
(16 users per replica) it also prints the TTFT p50 the router adds. Users start spread over
one request's length and TTFT counts requests sent after that, so it is the steady state's,
not the opening burst's (every user's first request at once). The ideal per replica is
32 tokens / 14 ms = 2286 tok/s; on a small machine the load generator itself caps both sides.
The routers get CPUs of their own (the last quarter, at least one), the replicas and the load
generator share the rest on every side (``--no-pin``: all share every CPU).

    .venv/bin/python bench/bench_scaleout.py [--replicas 1,2,4,8,16] [--seconds 6] [--routers 1,2] [--rounds 3] [--stream-interval 1] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router import Processes, cpu_split, describe_split, drive  # noqa: E402

from ttdist.runtime.scripted_engine import ScriptedEngineConfig  # noqa: E402

STEP_S = 0.014
USERS = 32


def run_point(n: int, routers: list[int], users: int, seconds: float, max_tokens: int, rounds: int,
              interval: int = 1, split=None) -> dict[str, object]:
    """tokens/s and TTFT for ``n`` replicas, direct and through each router count: ``rounds``
    short runs per side, sides alternating (ABC CBA ...), the round with the median tokens/s
    kept, so a shared machine's changing load falls on every side alike."""
    cfg = ScriptedEngineConfig(vocab_size=1000, step_s=STEP_S, max_batch=USERS)
    procs = Processes(n, cfg, "least_load", replica_procs=min(n, 4), routers=max(routers), interval=(interval, 0),
                      split=split)
    try:
        sides = {"direct": [f"127.0.0.1:{p}" for p in procs.replica_ports]}
        for k in routers:
            sides[f"{k} router{'s' if k > 1 else ''}"] = [f"127.0.0.1:{p}" for p in procs.router_ports[:k]]
        for addresses in sides.values():
            asyncio.run(drive(addresses, 4 * len(addresses), 4 * len(addresses), 4))   # warm every channel
        runs: dict[str, list] = {name: [] for name in sides}
        for k in range(rounds):
            for name in (list(sides) if k % 2 == 0 else list(sides)[::-1]):
                runs[name].append(asyncio.run(drive(sides[name], 10**9, n * users, max_tokens,
                                                    duration_s=seconds / rounds, connections=n,
                                                    stagger_s=max_tokens * STEP_S)))
        return {name: sorted(rs, key=lambda r: r.tps)[len(rs) // 2] for name, rs in runs.items()}
    finally:
        procs.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", default="1,2,4,8,16")
    ap.add_argument("--routers", default="1,2")
    ap.add_argument("--seconds", type=float, default=9.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per side and point")
    ap.add_argument("--stream-interval", type=int, default=1, help="the routers' chunk interval in tokens")
    ap.add_argument("--no-pin", action="store_true", help="let the routers share CPUs with the replicas and the load generator")
    args = ap.parse_args()
    split = cpu_split(not args.no_pin)
    routers = [int(x) for x in args.routers.split(",")]
    sizes = [int(x) for x in args.replicas.split(",")]
    full = {n: run_point(n, routers, USERS, args.seconds, args.max_tokens, args.rounds, args.stream_interval, split) for n in sizes}
    half_n = sizes[-1]
    half = run_point(half_n, routers, USERS // 2, args.seconds, args.max_tokens, args.rounds, args.stream_interval, split)
    names = list(full[sizes[0]])
    print(f"scale-out: {USERS} users per replica, {STEP_S * 1000:.0f} ms decode step, {args.seconds:.0f} s per point "
          f"(ideal {USERS / STEP_S:.0f} tok/s per replica), router stream interval {args.stream_interval}; "
          f"efficiency = through routers / direct, same run; {describe_split(split)}")
    head = f"{'replicas':>8}{'users':>7}{'direct tok/s':>14}"
    for name in names[1:]:
        head += f"{name + ' tok/s':>18}{'eff':>7}{'TTFT p50':>10}"
    print(head + f"{'direct TTFT':>13}")
    for n in sizes:
        r = full[n]
        line = f"{n:>8}{n * USERS:>7}{r['direct'].tps:>14.0f}"
        for name in names[1:]:
            line += f"{r[name].tps:>18.0f}{100 * r[name].tps / r['direct'].tps:>6.1f}%{r[name].ttft_p50_ms():>8.1f}ms"
        print(line + f"{r['direct'].ttft_p50_ms():>11.1f}ms")
    added = ", ".join(f"{name}: {half[name].ttft_p50_ms() - half['direct'].ttft_p50_ms():+.1f} ms" for name in names[1:])
    print(f"half load ({half_n} replicas x {USERS // 2} users): TTFT p50 direct {half['direct'].ttft_p50_ms():.1f} ms; "
          f"added by the router: {added} (target <= 5 ms); efficiency at {sizes[-1]} replicas target >= 90 %")


if __name__ == "__main__":
    main()
