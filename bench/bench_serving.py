"""(a) Serving overhead: the same workload on the in-process engine and through router + replica.

The sides differ only in the serving path. A third side puts the same engine behind one bare
gRPC server in a plain process (no Ray, no router), to show what a single gRPC hop into a
process whose step thread is busy costs by itself:

- the same engine: the in-process baseline is built by ``build_engine`` from the very
  ``ReplicaSetup`` and converted weights the coordinator gave the replica (mesh, KV pages,
  batch, context, torch threads), in a fresh process of its own started with the
  ``OMP_NUM_THREADS`` the coordinator gives replicas and at the replica's nice level, so
  torch and OpenMP run the same number of threads at the same OS priority on both sides;
- the same client load: ``--concurrency`` async users sending streaming requests back to
  back, the same prompts and lengths. In-process they call ``engine.generate`` in the
  engine's process (its step loop is a worker thread, ``AsyncEngine``); served they call
  the router over gRPC from this process (the one-hop side: its bare server);
- two kinds of load, both sides alike: closed loop (each user sends its next request when the
  last one ends: throughput) and open loop (Poisson arrivals at ``--load`` x the in-process
  side's closed-loop request rate, the same send times on both sides). Closed-loop TTFT couples
  the path to the step phase: a request the path delays by a few ms lands at another point of
  a ~40 ms decode step, so it waits a different time for the step to end, on top of the path.
  Open loop sends at times that do not depend on the path, so its added TTFT is the path's;
- the same CPUs: the in-process and one-hop sides use every CPU; the served deployment places
  its processes as one would on a host, the replica's engine process on the first CPU and the
  router, the replica's serving loop and the client on the rest (``--no-pin``: all share every CPU);
- the same machine state: rounds alternate between the two (ABBA order) with both warm, so a
  shared machine's changing load falls on both alike. Each round prints its figures and the
  engine's prefill / decode step counts (equal counts: the same batching) and the engine's
  own TTFT p50 (from the engine's ``generate`` call, the engine process's included), so the
  client's TTFT less the engine's is the path's ("path ms"); the summary compares medians.
  Targets: throughput loss <= 5 %, added TTFT p50 <= 5 ms.

    .venv/bin/python bench/bench_serving.py [--model tiny|smollm2|PATH] [--rounds 3] [--requests 32] [--concurrency 8] [--load 0.5] [--open-requests 64] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench_router import LoadResult, drive  # noqa: E402

IN_PROCESS, ONE_HOP, SERVED = "in-process engine", "engine behind one gRPC hop", "router + replica (Ray, gRPC)"


def prompt_ids(i: int, length: int) -> list[int]:
    return [(i * 131 + j * 7) % 40000 + 100 for j in range(length)]


@dataclass(frozen=True)
class Load:
    tag: str
    requests: int
    concurrency: int
    max_tokens: int
    prompt: int
    rate: float = 0.0      # open loop: Poisson arrivals per second (0: closed loop, ``concurrency`` users)

    def arrivals(self) -> list[float] | None:
        """Send times in s after the start, the same for every side (seeded)."""
        if not self.rate:
            return None
        rng, t, out = random.Random(self.requests), 0.0, []
        for _ in range(self.requests):
            out.append(t)
            t += rng.expovariate(self.rate)
        return out


@dataclass(frozen=True)
class Round:
    result: LoadResult
    prefill_steps: int
    decode_steps: int
    engine_ttft_p50_ms: float      # arrival at the engine to its first token, as the engine measured it


def engine_ttft_p50_ms(after, requests: int) -> float:
    """The engine's own TTFT p50 over the round's ``requests`` requests (its newest samples)."""
    samples = after.ttft_s[-requests:]
    return 1000 * statistics.median(samples) if samples else float("nan")


async def local_load(engine, load: Load) -> LoadResult:
    """``drive``'s load, calling the engine in this process instead of a server."""
    from ttdist.engine import GenerationRequest, SamplingParams

    counter = iter(range(load.requests))
    ttft, tokens, done = [], [0], [0]

    async def send(i):
        req = GenerationRequest(f"{load.tag}-{i}", prompt_token_ids=prompt_ids(i, load.prompt),
                                sampling=SamplingParams(max_tokens=load.max_tokens, ignore_eos=True))
        start = time.perf_counter()
        first = True
        async for out in engine.generate(req):
            if out.token_ids:
                if first:
                    ttft.append(time.perf_counter() - start)
                    first = False
                tokens[0] += len(out.token_ids)
        done[0] += 1

    async def user():
        for i in counter:
            await send(i)

    async def arrival(i, at):
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        await send(i)

    t0 = time.perf_counter()
    arrivals = load.arrivals()
    if arrivals is None:
        await asyncio.gather(*(user() for _ in range(load.concurrency)))
    else:
        await asyncio.gather(*(arrival(i, at) for i, at in enumerate(arrivals)))
    return LoadResult(done[0], tokens[0], time.perf_counter() - t0, ttft)


def pin(pid: int, cpus: set[int] | None) -> None:
    """Every thread of process ``pid`` (and the threads it starts later) onto ``cpus``."""
    if cpus is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass   # a thread that ended meanwhile


def _start_engine(setup, weights, niceness: int):
    """The replica's engine, built and started in this process at the replica's nice level."""
    from ttdist.runtime.replica import build_engine

    if niceness > os.nice(0):
        os.nice(niceness - os.nice(0))
    engine = build_engine(replace(setup, engine_process=False), weights)   # its step loop a thread of this process
    engine.start()
    return engine


def _engine_main(setup, weights, niceness: int, conn) -> None:
    """The in-process side: the replica's engine and the client load, in one fresh process."""
    import torch

    engine = _start_engine(setup, weights, niceness)
    conn.send((torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), os.nice(0)))
    while (load := conn.recv()) is not None:
        before = engine.stats()
        result = asyncio.run(local_load(engine, load))
        after = engine.stats()
        conn.send(Round(result, after.prefill_steps_total - before.prefill_steps_total,
                        after.decode_steps_total - before.decode_steps_total, engine_ttft_p50_ms(after, load.requests)))
    engine.shutdown()


def _one_hop_main(setup, weights, niceness: int, conn) -> None:
    """The one-hop side: the same engine behind a bare grpc.aio ``Generate`` in a fresh process (no
    Ray, no router, no replica service), so what one gRPC hop into the engine's process costs shows
    by itself. Answers each message on ``conn`` with the engine's stats; None ends it."""
    import itertools

    import grpc

    from ttdist.engine import GenerationRequest, SamplingParams
    from ttdist.v1 import generation_pb2 as pb
    from ttdist.v1 import generation_pb2_grpc as pb_grpc

    engine = _start_engine(setup, weights, niceness)
    ids = itertools.count()

    class Bare(pb_grpc.GenerationServicer):
        async def Generate(self, request, context):
            req = GenerationRequest(f"hop-{next(ids)}", prompt_token_ids=list(request.token_ids.ids),
                                    sampling=SamplingParams(max_tokens=request.sampling.max_tokens, ignore_eos=True))
            async for out in engine.generate(req):
                if out.token_ids:
                    yield pb.GenerateResponse(chunk=pb.Chunk(token_ids=out.token_ids))

    async def serve() -> None:
        server = grpc.aio.server()
        pb_grpc.add_GenerationServicer_to_server(Bare(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, conn.recv) is not None:
            conn.send(engine.stats())
        await server.stop(0)

    asyncio.run(serve())
    engine.shutdown()


def _spawn(target, setup, weights, niceness: int):
    """A fresh process running ``target`` with the replica's ``OMP_NUM_THREADS``; its pipe end."""
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(setup.cpu_threads)   # as the coordinator starts replicas
    try:
        proc = ctx.Process(target=target, args=(setup, weights, niceness, child), daemon=True)
        proc.start()
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return proc, conn


def _close(proc, conn) -> None:
    conn.send(None)
    proc.join(timeout=30)
    if proc.is_alive():
        proc.kill()


class InProcessSide:
    def __init__(self, setup, weights, niceness: int) -> None:
        self.proc, self.conn = _spawn(_engine_main, setup, weights, niceness)
        self.torch_threads, self.omp, self.niceness = self.conn.recv()

    def run(self, load: Load) -> Round:
        self.conn.send(load)
        return self.conn.recv()

    def close(self) -> None:
        _close(self.proc, self.conn)


class _GrpcSide:
    """A side the load reaches over gRPC from this process, at ``self.address``."""

    address: str

    def stats(self):
        raise NotImplementedError

    def run(self, load: Load) -> Round:
        before = self.stats()
        result = asyncio.run(drive([self.address], load.requests, load.concurrency, load.max_tokens,
                                   prompts=lambda i: prompt_ids(i, load.prompt), arrivals=load.arrivals()))
        after = self.stats()
        return Round(result, after.prefill_steps_total - before.prefill_steps_total,
                     after.decode_steps_total - before.decode_steps_total, engine_ttft_p50_ms(after, load.requests))

    def close(self) -> None:
        pass


class OneHopSide(_GrpcSide):
    def __init__(self, setup, weights, niceness: int) -> None:
        self.proc, self.conn = _spawn(_one_hop_main, setup, weights, niceness)
        self.address = f"127.0.0.1:{self.conn.recv()}"

    def stats(self):
        self.conn.send(True)
        return self.conn.recv()

    def close(self) -> None:
        _close(self.proc, self.conn)


class ServedSide(_GrpcSide):
    def __init__(self, deployment, replica) -> None:
        self.address = deployment.address
        self.replica = replica

    def stats(self):
        import ray

        return ray.get(self.replica.engine_stats.remote())


def step_cpu_split() -> tuple[set[int], set[int]] | None:
    """(the engine process's CPUs, everyone else's) on the served side: the first CPU for the step
    loop, as a deployment gives an engine cores of its own; the client, router and the replica's
    serving loop share the rest. None: one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else None


def checkpoint(model: str, tmp: str) -> str:
    if model == "tiny":
        from ttdist.model.testing import tiny_llama_checkpoint

        return str(tiny_llama_checkpoint(Path(tmp) / "tiny-llama", num_hidden_layers=4, hidden_size=256,
                                         intermediate_size=512, num_attention_heads=8, num_key_value_heads=4))
    if model == "smollm2":
        from ttdist.model.smollm2 import materialize

        return str(materialize())
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--pages", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per engine, both sides")
    ap.add_argument("--load", type=float, default=0.5,
                    help="open-loop rate as a fraction of the in-process closed-loop request rate (0: closed loop only)")
    ap.add_argument("--open-requests", type=int, default=64, help="requests per open-loop round")
    ap.add_argument("--no-pin", action="store_true", help="served: let the engine process share every CPU with the serving path")
    args = ap.parse_args()
    import psutil
    import ray

    from ttdist.router.deploy import deploy, wait_serving
    from ttdist.runtime.config import ClusterConfig, ReplicaGroup

    tmp = tempfile.mkdtemp(prefix="ttdist-bench-")
    config = ClusterConfig(model=checkpoint(args.model, tmp), groups=(ReplicaGroup(),), port=0, dashboard_port=None,
                           max_kv_pages=args.pages, weights_cache=str(Path(tmp) / "weights"), cpu_threads=args.threads)
    deployment = deploy(config)
    sides = {}
    try:
        wait_serving(deployment)
        setup, weights = ray.get(deployment.coordinator.replica_setup.remote("replica-0"))
        replica = ray.get(deployment.coordinator.actor.remote("replica-0"))
        replica_nice = psutil.Process(ray.get(replica.ping.remote())).nice()
        sides = {IN_PROCESS: InProcessSide(setup, weights, replica_nice)}
        sides[ONE_HOP] = OneHopSide(setup, weights, replica_nice)
        split = None if args.no_pin else step_cpu_split()
        if split is not None:   # the served deployment places its processes; the other sides use every CPU
            replica_proc = psutil.Process(ray.get(replica.ping.remote()))
            for proc in replica_proc.children():   # the replica's engine process
                pin(proc.pid, split[0])
            for pid in (os.getpid(), replica_proc.pid, *(ray.get(r.pid.remote()) for r in deployment.routers)):
                pin(pid, split[1])
        sides[SERVED] = ServedSide(deployment, replica)
        local = sides[IN_PROCESS]
        replica_omp = ray.get(replica.env.remote("OMP_NUM_THREADS"))
        warm = Load("warm", args.concurrency, args.concurrency, args.max_tokens, args.prompt)
        for side in sides.values():
            side.run(warm)
        rounds: dict[tuple[str, str], list[Round]] = {}
        rate = 0.0
        print(f"serving overhead: model {args.model}, {setup.mesh} {setup.backend} mesh, {args.requests} requests x "
              f"{args.max_tokens} tokens, prompt {args.prompt}, {args.concurrency} concurrent; both engines: "
              f"{setup.num_pages} KV pages, batch {setup.max_batch}, torch threads {local.torch_threads} "
              f"(OMP_NUM_THREADS in-process {local.omp}, replica {replica_omp}), nice level in-process "
              f"{local.niceness}, replica {replica_nice}; " + (
                  "no CPU pinning" if split is None else f"served: the replica's engine process on CPUs "
                  f"{sorted(split[0])}, the router, the replica's serving loop and the client on CPUs "
                  f"{sorted(split[1])}; the other sides on every CPU"), flush=True)
        print(f"{'round':<7}{'load':<12}{'path':<31}{'tokens/s':>10}{'TTFT p50 ms':>13}{'in engine':>11}"
              f"{'prefill/decode steps':>22}")
        for k in range(args.rounds):
            order = list(sides) if k % 2 == 0 else list(sides)[::-1]
            loads = [("closed", Load(f"r{k}", args.requests, args.concurrency, args.max_tokens, args.prompt))]
            if args.load:
                loads.append(("open", None))
            for kind, load in loads:
                for name in order:
                    if load is None:   # the open-loop rate follows the first closed round's in-process rate
                        load = Load(f"r{k}o", args.open_requests, args.concurrency, args.max_tokens, args.prompt, rate)
                    r = sides[name].run(load)
                    rounds.setdefault((kind, name), []).append(r)
                    if kind == "closed" and name == IN_PROCESS and not rate:
                        rate = args.load * r.result.rps
                    label = kind if kind == "closed" else f"{load.rate:.1f} req/s"
                    print(f"{k + 1:<7}{label:<12}{name:<31}{r.result.tps:>10.1f}{r.result.ttft_p50_ms():>13.2f}"
                          f"{r.engine_ttft_p50_ms:>11.2f}{f'{r.prefill_steps}/{r.decode_steps}':>22}", flush=True)
    finally:
        for side in sides.values():
            side.close()
        deployment.shutdown()
    tps = {key: statistics.median(r.result.tps for r in rs) for key, rs in rounds.items()}
    ttft = {key: statistics.median(r.result.ttft_p50_ms() for r in rs) for key, rs in rounds.items()}
    # the path: the client's TTFT p50 less the engine's own, per round (what the path itself adds)
    path = {key: statistics.median(r.result.ttft_p50_ms() - r.engine_ttft_p50_ms for r in rs) for key, rs in rounds.items()}
    print(f"{'median':<19}{'path':<31}{'tokens/s':>10}{'TTFT p50 ms':>13}{'path ms':>11}")
    for kind, name in rounds:
        print(f"median {kind:<12}{name:<31}{tps[kind, name]:>10.1f}{ttft[kind, name]:>13.2f}{path[kind, name]:>11.2f}")
    for kind in ("closed", "open") if args.load else ("closed",):
        head = "closed loop" if kind == "closed" else f"open loop at {rate:.1f} req/s ({args.load:.0%} of in-process capacity)"
        print(f"{head}: added TTFT p50 one gRPC hop {ttft[kind, ONE_HOP] - ttft[kind, IN_PROCESS]:.2f} ms, "
              f"router + replica {ttft[kind, SERVED] - ttft[kind, IN_PROCESS]:.2f} ms (target <= 5 ms)")
    print(f"closed loop: throughput loss router + replica {100 * (1 - tps['closed', SERVED] / tps['closed', IN_PROCESS]):.1f} % "
          f"(target <= 5 %), one gRPC hop {100 * (1 - tps['closed', ONE_HOP] / tps['closed', IN_PROCESS]):.1f} %")


if __name__ == "__main__":
    main()
