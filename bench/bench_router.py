"""(b) Router capacity: requests/s and streamed tokens/s through one router, zero-compute replicas.

Replicas are scripted engines with no step cost (all in one process of their own), so
what the router path adds is the router's: gRPC in, policy, the per-replica stream, gRPC
out. The same load (one load-generator process, counting every token of chunks that carry
several) is also sent straight to the replicas, in alternating rounds; it prints the tokens/s
ratio (target >= 0.9 at stream interval 1), the router process's CPU time per streamed
token and the tokens per streamed message (a stream that falls behind takes every token
waiting for it in one message, on both paths). The router gets a CPU of its own, as in a
deployment, and the replicas and the load generator share the others on both paths
(``--no-pin``: everything shares every CPU, so the router's CPU is taken from the replicas).
It also prints how busy the router process was and each CPU's busy share on each path, so
which side ran out of CPU shows.
Also the harness that bench_scaleout.py and bench_cache_aware.py use.

    .venv/bin/python bench/bench_router.py [--replicas 4] [--requests 2000] [--concurrency 64] [--stream-interval 1] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402

from ttdist.runtime.request_checks import ModelCard  # noqa: E402
from ttdist.runtime.scripted_engine import ScriptedEngineConfig  # noqa: E402
from ttdist.v1 import generation_pb2 as pb  # noqa: E402
from ttdist.v1 import generation_pb2_grpc as pb_grpc  # noqa: E402


def card_for(cfg: ScriptedEngineConfig) -> ModelCard:
    return ModelCard("scripted", cfg.vocab_size, cfg.max_context, cfg.page_size)


def _replicas_main(n: int, cfg: ScriptedEngineConfig, conn) -> None:
    from ttdist.runtime.replica_service import start_replica_server
    from ttdist.runtime.scripted_engine import ScriptedEngine

    async def main():
        servers = []
        for i in range(n):
            engine = ScriptedEngine(cfg)
            engine.start()
            servers.append(await start_replica_server(engine, card_for(cfg), f"replica-{i}", lambda: None))
        conn.send([s.port for s in servers])
        while not conn.poll():
            await asyncio.sleep(0.1)
        for server in servers:
            await server.stop(0)

    asyncio.run(main())


def _router_main(ports: list[int], cfg: ScriptedEngineConfig, policy: str, conn, interval=(1, 0)) -> None:
    from ttdist.router.router import Router, RouterConfig
    from ttdist.router.service import start_router_server
    from ttdist.router.sources import StaticSource
    from ttdist.router.stream_interval import StreamInterval
    from ttdist.runtime.routing_table import ReplicaEntry, RoutingTable

    async def main():
        entries = tuple(ReplicaEntry(f"replica-{i}", f"127.0.0.1:{p}", "ready") for i, p in enumerate(ports))
        config = RouterConfig(policy=policy, max_inflight=100000, stream_interval=StreamInterval(*interval))
        router = Router(config, StaticSource(RoutingTable(card_for(cfg), entries)))
        server = await start_router_server(router, "127.0.0.1", 0)
        conn.send(server.port)
        while not conn.poll():
            await asyncio.sleep(0.1)
        await server.stop(0)
        await router.stop()

    asyncio.run(main())


def cpu_split(pin: bool) -> tuple[set[int], set[int]] | None:
    """(router CPUs, everyone else's CPUs) when pinning: the routers get the last quarter of the
    CPUs (at least one), as a deployment gives a router cores of its own; the replicas and the
    load generator share the rest on both sides of a comparison. None: no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None
    k = max(1, len(cpus) // 4)
    return set(cpus[-k:]), set(cpus[:-k])


def describe_split(split) -> str:
    if split is None:
        return "no CPU pinning: routers, replicas and the load generator share every CPU"
    routers, rest = split
    return f"routers pinned to CPUs {sorted(routers)}; replicas and the load generator to CPUs {sorted(rest)} on both sides"


class Processes:
    """Scripted replicas in ``replica_procs`` processes and ``routers`` routers, each in its own
    process (a router's port and pid: ``router_ports[i]``, ``router_pids[i]``). With ``split``
    (``cpu_split``) the routers run on their CPUs and the replicas and this process on the rest."""

    def __init__(self, n: int, cfg: ScriptedEngineConfig, policy: str | None = "round_robin", replica_procs: int = 1,
                 routers: int = 1, interval: tuple[int, int] = (1, 0), split: tuple[set[int], set[int]] | None = None):
        if split is not None:
            os.sched_setaffinity(0, split[1])   # the load generator; children inherit it
        ctx = mp.get_context("spawn")
        self.procs, self.conns, self.replica_ports = [], [], []
        per = -(-n // replica_procs)
        for start in range(0, n, per):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_replicas_main, args=(min(per, n - start), cfg, child), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.conns.append(parent)
            self.replica_ports += parent.recv()
        self.router_ports, self.router_pids = [], []
        for _ in range(routers if policy else 0):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_router_main, args=(self.replica_ports, cfg, policy, child, interval), daemon=True)
            if split is not None:   # the router starts on its CPUs, so every thread it starts stays there
                os.sched_setaffinity(0, split[0])
            try:
                proc.start()
            finally:
                if split is not None:
                    os.sched_setaffinity(0, split[1])
            self.procs.append(proc)
            self.conns.append(parent)
            self.router_ports.append(parent.recv())
            self.router_pids.append(proc.pid)

    @property
    def router_port(self) -> int | None:
        return self.router_ports[0] if self.router_ports else None

    @property
    def router_pid(self) -> int | None:
        return self.router_pids[0] if self.router_pids else None

    def close(self) -> None:
        for conn in self.conns:
            conn.send("stop")
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


@dataclass
class LoadResult:
    requests: int
    tokens: int
    seconds: float
    ttft: list[float]
    chunks: int = 0     # streamed messages that carried tokens

    @property
    def tokens_per_chunk(self) -> float:
        return self.tokens / max(1, self.chunks)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds

    def ttft_p50_ms(self) -> float:
        return 1000 * statistics.median(self.ttft) if self.ttft else 0.0


def prompt_for(i: int, length: int = 16) -> list[int]:
    return [(i * 31 + j) % 997 + 1 for j in range(length)]


async def drive(addresses: list[str], requests: int, concurrency: int, max_tokens: int,
                prompts=prompt_for, duration_s: float | None = None, connections: int = 0,
                stagger_s: float = 0.0, arrivals: list[float] | None = None) -> LoadResult:
    """``concurrency`` users, each sending streaming requests back to back (round robin over
    ``connections`` client connections spread over ``addresses``; at least one per address),
    until ``requests`` are done or ``duration_s`` has passed. Give both sides of a comparison
    the same ``connections``: one HTTP/2 connection carries its streams one frame at a time.
    ``stagger_s``: user u starts ``u / concurrency * stagger_s`` late and TTFT counts only
    requests sent after ``stagger_s``, so it is the steady state's, not the opening burst's.
    ``arrivals``: open loop instead: request i is sent ``arrivals[i]`` s after the start, whatever
    is still running (``concurrency`` is then unused)."""
    n = max(connections, len(addresses))
    channels = [grpc.aio.insecure_channel(addresses[i % len(addresses)], options=[("grpc.use_local_subchannel_pool", 1)])
                for i in range(n)]
    stubs = [pb_grpc.GenerationStub(c) for c in channels]
    counter = iter(range(requests))
    ttft, tokens, chunks = [], [0], [0]
    t0 = time.perf_counter()
    done = [0]

    async def send(i):
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompts(i)), stream=True,
                                 sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        start = time.perf_counter()
        first = True
        steady = start - t0 >= stagger_s
        async for resp in stubs[i % len(stubs)].Generate(req):
            if resp.WhichOneof("kind") == "chunk":
                if first:
                    if steady:
                        ttft.append(time.perf_counter() - start)
                    first = False
                tokens[0] += len(resp.chunk.token_ids)
                chunks[0] += 1
        done[0] += 1

    async def user(u):
        await asyncio.sleep(u / concurrency * stagger_s)
        for i in counter:
            if duration_s is not None and time.perf_counter() - t0 > duration_s:
                return
            await send(i)

    async def arrival(i):
        await asyncio.sleep(max(0.0, t0 + arrivals[i] - time.perf_counter()))
        await send(i)

    if arrivals is None:
        await asyncio.gather(*(user(u) for u in range(concurrency)))
    else:
        await asyncio.gather(*(arrival(i) for i in range(requests)))
    seconds = time.perf_counter() - t0
    for c in channels:
        await c.close()
    return LoadResult(done[0], tokens[0], seconds, ttft, chunks[0])


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def cpu_busy(since: list[tuple[int, int]] | None = None):
    """Each CPU's (busy, total) jiffies from /proc/stat; with ``since``, each CPU's busy
    fraction since then."""
    rows = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                rows.append((sum(v) - idle, sum(v)))
    if since is None:
        return rows
    return [(b - b0) / max(1, t - t0) for (b, t), (b0, t0) in zip(rows, since)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="rounds per side, in ABBA order")
    ap.add_argument("--stream-interval", type=int, default=1, help="the router's chunk interval in tokens")
    ap.add_argument("--connections", type=int, default=0,
                    help="client connections, the same on both paths (default: one per replica)")
    ap.add_argument("--no-pin", action="store_true", help="let the router share CPUs with the replicas and the load generator")
    args = ap.parse_args()
    cfg = ScriptedEngineConfig(vocab_size=1000, step_s=0.0, max_batch=256)
    split = cpu_split(not args.no_pin)
    procs = Processes(args.replicas, cfg, interval=(args.stream_interval, 0), split=split)
    results: dict[str, list[LoadResult]] = {DIRECT: [], ROUTED: []}
    router_cpu, routed_tokens, routed_s = 0.0, 0, 0.0
    busy = {DIRECT: [], ROUTED: []}
    try:
        sides = {DIRECT: [f"127.0.0.1:{p}" for p in procs.replica_ports], ROUTED: [f"127.0.0.1:{procs.router_port}"]}
        for addresses in sides.values():   # warm up both paths
            asyncio.run(drive(addresses, 200, 16, 8))
        for k in range(args.rounds):
            for name in (list(sides) if k % 2 == 0 else list(sides)[::-1]):
                before, cpus = cpu_seconds(procs.router_pid), cpu_busy()
                r = asyncio.run(drive(sides[name], args.requests, args.concurrency, args.max_tokens,
                                      connections=args.connections or args.replicas))
                busy[name].append(cpu_busy(cpus))
                if name == ROUTED:
                    router_cpu += cpu_seconds(procs.router_pid) - before
                    routed_tokens += r.tokens
                    routed_s += r.seconds
                results[name].append(r)
    finally:
        procs.close()
    print(f"router capacity: {args.replicas} zero-compute replicas, {args.concurrency} concurrent streams, "
          f"{args.max_tokens} tokens per request, {args.requests} requests, {args.rounds} rounds per path (ABBA), "
          f"router stream interval {args.stream_interval}, {args.connections or args.replicas} client connections per path; "
          f"{describe_split(split)}")
    print(f"{'path':<22}{'requests/s':>12}{'tokens/s':>12}{'TTFT p50 ms':>13}{'tokens/msg':>12}")
    tps = {}
    for name, rs in results.items():
        tps[name] = statistics.median(r.tps for r in rs)
        rps = statistics.median(r.rps for r in rs)
        print(f"{name:<22}{rps:>12.0f}{tps[name]:>12.0f}{statistics.median(r.ttft_p50_ms() for r in rs):>13.2f}"
              f"{statistics.median(r.tokens_per_chunk for r in rs):>12.2f}")
    print(f"tokens/s ratio router / direct {tps[ROUTED] / tps[DIRECT]:.2f} (target >= 0.9); router process "
          f"{1e6 * router_cpu / max(1, routed_tokens):.1f} CPU us per streamed token, busy "
          f"{router_cpu / max(1e-9, routed_s):.0%} of the time")
    for name, rows in busy.items():
        per_cpu = [statistics.median(r[c] for r in rows) for c in range(len(rows[0]))]
        print(f"CPU busy, {name}: " + ", ".join(f"CPU {c} {b:.0%}" for c, b in enumerate(per_cpu)))


DIRECT, ROUTED = "direct to replicas", "through one router"


if __name__ == "__main__":
    main()
