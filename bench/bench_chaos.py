"""Chaos: SIGKILL busy replicas under steady greedy traffic, or soak the cluster for a while.

Kill mode (default): a real Ray cluster of ``--replicas`` scripted replicas (greedy: the next
token depends only on the sequence, so every stream has one exact expected output) or tiny
random Llama replicas (``--model tiny``: the expected output is that prompt's undisturbed
greedy run through the same cluster) behind the router. ``--concurrency`` clients keep greedy
streams going; every ``--kill-every`` seconds, once every replica is ready, the busiest one is
SIGKILLed, ``--kills`` times (``--overlap``: every ``--kill-every`` seconds the busiest ready
replica running at least two streams, without waiting for the others to come back, so kills
land while replicas restart; no restart times then). Prints, like Dynamo's fault-tolerance summary: kills, streams
started, finished exact, lost (ended in an error), wrong (a different output), duplicated
tokens, and per kill the recovery time (until every stream in flight at the kill has a new
token) and the replica's restart time (kill to ready again), p50 and max. Then, traffic still
running, ``--coordinator-kills`` SIGKILLs of the coordinator (back: it answers again with
every replica re-registered; the streams must not notice), and, traffic stopped (a router's
own streams end with it), ``--router-kills`` SIGKILLs of the router, each timed from the kill
to the first request that succeeds through the Python client's retries.

Soak mode (``--soak SECONDS``): ``--concurrency`` (default 1000) concurrent streams on
scripted replicas, no kills; prints errors and the router's and replicas' RSS in the first
and last third of the run (mean of samples) and the growth between them.

    .venv/bin/python bench/bench_chaos.py --kills 20
    .venv/bin/python bench/bench_chaos.py --model tiny --kills 10 --overlap --kill-every 4 --concurrency 18
    .venv/bin/python bench/bench_chaos.py --soak 600 --concurrency 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import grpc  # noqa: E402
import psutil  # noqa: E402
import ray  # noqa: E402

from ttdist.router.deploy import deploy, wait_serving  # noqa: E402
from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup  # noqa: E402
from ttdist.runtime.scripted_engine import ScriptedEngineConfig, next_token  # noqa: E402
from ttdist.v1 import generation_pb2 as pb  # noqa: E402
from ttdist.v1 import generation_pb2_grpc as pb_grpc  # noqa: E402

VOCAB = 1000


@dataclass
class Tally:
    started: int = 0
    exact: int = 0
    lost: int = 0
    wrong: int = 0
    duplicated: int = 0
    errors: list[str] = field(default_factory=list)
    active: dict[int, float] = field(default_factory=dict)     # stream -> time of its last token
    resumed: dict[int, float] = field(default_factory=dict)    # stream -> first token after the last kill


def greedy(ids: list[int], n: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), stream=True,
                              sampling=pb.SamplingParams(max_tokens=n, ignore_eos=True))


def scripted_expected(prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(next_token(seq, VOCAB))
    return seq[len(prompt):]


async def one_stream(stub, key: int, prompt: list[int], n: int, want: list[int] | None, tally: Tally,
                     timeout: float = 300.0) -> list[int] | None:
    tally.started += 1
    ids: list[int] = []
    tally.active[key] = time.monotonic()
    try:
        async for resp in stub.Generate(greedy(prompt, n), timeout=timeout):
            if resp.WhichOneof("kind") == "chunk":
                ids.extend(resp.chunk.token_ids)
                now = time.monotonic()
                tally.active[key] = now
                tally.resumed.setdefault(key, now)
    except grpc.aio.AioRpcError as err:
        tally.lost += 1
        tally.errors.append(f"{err.code().name}: {err.details()}")
        return None
    finally:
        tally.active.pop(key, None)
    if want is None:
        return ids
    if ids == want:
        tally.exact += 1
    else:
        tally.wrong += 1
        tally.duplicated += max(0, len(ids) - len(want))
    return ids


async def replicas(deployment) -> list:
    return await deployment.coordinator.replicas.remote()


async def status_loads(stub) -> dict[str, tuple[str, int, int]]:
    st = await stub.GetClusterStatus(pb.ClusterStatusRequest(), timeout=10)
    return {r.replica_id: (r.state, r.running, r.pid) for r in st.replicas}


async def wait_all_ready(deployment, n: int, timeout: float = 300.0, gone_pid: int = 0) -> float:
    """Seconds until all ``n`` replicas are ready and none of them is process ``gone_pid``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rs = await replicas(deployment)
        if sum(r.state == "ready" and r.pid != gone_pid for r in rs) == n:
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise RuntimeError(f"replicas not all ready after {timeout} s")


def p50_max(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} / {max(xs):.2f}" if xs else "-"


async def kill_mode(args, deployment) -> None:
    channel = grpc.aio.insecure_channel(deployment.address)
    stub = pb_grpc.GenerationStub(channel)
    rng = random.Random(0)
    prompts = [[rng.randrange(1, VOCAB) for _ in range(rng.randint(4, 24))] for _ in range(64)]
    lengths = [rng.randint(args.min_tokens, args.max_tokens) for _ in prompts]
    warm = Tally()
    if args.model == "tiny":   # the undisturbed greedy output of each prompt, through the same cluster
        wants = await asyncio.gather(*(one_stream(stub, -1 - i, p, n, None, warm) for i, (p, n) in enumerate(zip(prompts, lengths))))
        if warm.lost:
            raise RuntimeError(f"the undisturbed runs failed: {warm.errors[:3]}")
    else:
        wants = [scripted_expected(p, n) for p, n in zip(prompts, lengths)]
    tally = Tally()
    stop = asyncio.Event()
    counter = iter(range(10**9))

    async def client():
        while not stop.is_set():
            i = rng.randrange(len(prompts))
            await one_stream(stub, next(counter), prompts[i], lengths[i], wants[i], tally)

    clients = [asyncio.create_task(client()) for _ in range(args.concurrency)]
    recoveries, restarts = [], []
    try:
        for k in range(args.kills):
            if not args.overlap:
                await wait_all_ready(deployment, args.replicas)
            await asyncio.sleep(args.kill_every)
            loads = await status_loads(stub)
            busy = sorted((v[1], rid) for rid, v in loads.items() if v[0] == "ready" and v[1] > int(args.overlap))
            while args.overlap and not busy:   # a kill lands only where it takes several streams
                await asyncio.sleep(0.05)
                loads = await status_loads(stub)
                busy = sorted((v[1], rid) for rid, v in loads.items() if v[0] == "ready" and v[1] > 1)
            if not busy:
                continue
            down = sum(v[0] != "ready" for v in loads.values())
            victim = busy[-1][1]
            os.kill(loads[victim][2], signal.SIGKILL)
            t_kill = time.monotonic()
            in_flight = set(tally.active)
            tally.resumed.clear()
            while True:   # recovery: every stream in flight at the kill has streamed again (or ended)
                waiting = [s for s in in_flight if s in tally.active and s not in tally.resumed]
                if not waiting or time.monotonic() - t_kill > 120:
                    break
                await asyncio.sleep(0.01)
            recoveries.append(time.monotonic() - t_kill)
            if args.overlap:
                print(f"kill {k + 1}: {victim} (running {busy[-1][0]}, {down} other replicas down), streams moving "
                      f"again after {recoveries[-1]:.2f} s", flush=True)
                continue
            await wait_all_ready(deployment, args.replicas, gone_pid=loads[victim][2])
            restarts.append(time.monotonic() - t_kill)
            print(f"kill {k + 1}: {victim} (running {busy[-1][0]}), streams moving again after "
                  f"{recoveries[-1]:.2f} s, replica ready again after {restarts[-1]:.2f} s", flush=True)
        coordinator_back = await coordinator_kills(args, deployment)
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await channel.close()
    router_back = await router_kills(args, deployment, prompts[0])
    print()
    print(f"{'engine':<12}{'kills':>6}{'started':>9}{'exact':>7}{'lost':>6}{'wrong':>7}{'dup tok':>9}"
          f"{'recovery p50/max s':>21}{'restart p50/max s':>20}")
    print(f"{args.model:<12}{len(recoveries):>6}{tally.started:>9}{tally.exact:>7}{tally.lost:>6}{tally.wrong:>7}"
          f"{tally.duplicated:>9}{p50_max(recoveries):>21}{p50_max(restarts):>20}")
    print(f"coordinator SIGKILLs: {len(coordinator_back)}, back (answering, every replica re-registered) after "
          f"p50 / max {p50_max(coordinator_back)} s; the streams above ran through them")
    print(f"router SIGKILLs: {len(router_back)}, first request through the client's retries after "
          f"p50 / max {p50_max(router_back)} s")
    if tally.errors:
        print("errors:", *sorted(set(tally.errors))[:5], sep="\n  ")


async def actor_pid(actor) -> int:
    return await actor.__ray_call__.remote(lambda self: os.getpid())


async def coordinator_kills(args, deployment) -> list[float]:
    back = []
    for k in range(args.coordinator_kills):
        await wait_all_ready(deployment, args.replicas)
        await asyncio.sleep(args.kill_every)
        before = {r.replica_id: r.pid for r in await replicas(deployment)}
        pid = await actor_pid(deployment.coordinator)
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        while True:
            try:
                rs = await asyncio.wait_for(replicas(deployment), 5.0)
                if await actor_pid(deployment.coordinator) != pid and all(
                        r.state == "ready" and not r.recovering for r in rs):
                    break
            except (asyncio.TimeoutError, ray.exceptions.RayError):
                pass
            await asyncio.sleep(0.02)
        back.append(time.monotonic() - t_kill)
        same = {r.replica_id: r.pid for r in rs} == before
        print(f"coordinator kill {k + 1}: back after {back[-1]:.2f} s, same replica processes: {same}", flush=True)
    return back


async def router_kills(args, deployment, prompt: list[int]) -> list[float]:
    from ttdist.client import Client, RetryPolicy

    retry = RetryPolicy(max_attempts=None, initial_backoff_s=0.05, max_backoff_s=0.25, max_wait_s=120)
    back = []
    with Client(deployment.address, retry=retry, timeout=180) as client:
        for k in range(args.router_kills):
            await asyncio.to_thread(client.generate, prompt, max_tokens=4, ignore_eos=True)
            os.kill(await actor_pid(deployment.router), signal.SIGKILL)
            t_kill = time.monotonic()
            await asyncio.to_thread(client.generate, prompt, max_tokens=4, ignore_eos=True)
            back.append(time.monotonic() - t_kill)
            print(f"router kill {k + 1}: a request succeeded {back[-1]:.2f} s after it", flush=True)
    return back


def rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


async def soak_mode(args, deployment) -> None:
    router_pid = ray.get(deployment.router.__ray_call__.remote(lambda self: os.getpid()))
    replica_pids = {r.replica_id: r.pid for r in await replicas(deployment)}
    channel = grpc.aio.insecure_channel(deployment.address, options=[("grpc.max_concurrent_streams", 4096)])
    stub = pb_grpc.GenerationStub(channel)
    rng = random.Random(1)
    tally = Tally()
    stop = asyncio.Event()
    counter = iter(range(10**9))

    async def client():
        while not stop.is_set():
            prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randint(4, 32))]
            n = rng.randint(args.min_tokens, args.max_tokens)
            await one_stream(stub, next(counter), prompt, n, scripted_expected(prompt, n), tally)

    samples: list[tuple[float, int, int]] = []
    t0 = time.monotonic()
    clients = [asyncio.create_task(client()) for _ in range(args.concurrency)]
    while time.monotonic() - t0 < args.soak:
        await asyncio.sleep(5.0)
        samples.append((time.monotonic() - t0, rss(router_pid), sum(rss(p) for p in replica_pids.values())))
        print(f"{samples[-1][0]:6.0f} s: {tally.started} started, {tally.exact} exact, {tally.lost} errors, "
              f"{len(tally.active)} in flight, router RSS {samples[-1][1] / 2**20:.1f} MiB, "
              f"replicas RSS {samples[-1][2] / 2**20:.1f} MiB", flush=True)
    stop.set()
    await asyncio.gather(*clients)
    await channel.close()
    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]

    def growth(col: int) -> tuple[float, float, float]:
        a = statistics.mean(s[col] for s in first) / 2**20
        b = statistics.mean(s[col] for s in last) / 2**20
        return a, b, 100.0 * (b - a) / a

    print()
    print(f"soak {args.soak:.0f} s, {args.concurrency} concurrent streams on {args.replicas} scripted replicas")
    print(f"streams started {tally.started}, finished exact {tally.exact}, errors {tally.lost}, wrong {tally.wrong}")
    for name, col in (("router", 1), ("replicas", 2)):
        a, b, g = growth(col)
        print(f"{name:<9} RSS first third {a:8.1f} MiB, last third {b:8.1f} MiB: growth {g:+.1f} %")
    if tally.errors:
        print("errors:", *sorted(set(tally.errors))[:5], sep="\n  ")


def cluster_config(args) -> ClusterConfig:
    # the kills here are on purpose, not a crash loop: no backoff and no crash-loop verdict
    health = dict(heartbeat_s=0.25, unhealthy_after_s=2.0, failed_after_s=6.0, restart_delay_s=args.restart_delay,
                  restart_backoff_max_s=args.restart_delay, crash_loop_failures=10**6, stable_after_s=0.5)
    health = HealthConfig(**{k: v for k, v in health.items() if k in {f.name for f in fields(HealthConfig)}})
    common = dict(port=0, dashboard_port=None, health=health, groups=(ReplicaGroup(count=args.replicas, mesh="1x1"),))
    if args.model == "tiny":
        from ttdist.model.testing import tiny_llama_checkpoint

        folder = Path(args.workdir) / "tiny-llama"
        checkpoint = folder if (folder / "config.json").exists() else tiny_llama_checkpoint(folder, seed=3)
        return ClusterConfig(model=str(checkpoint), max_kv_pages=256, weights_cache=str(Path(args.workdir) / "weights"),
                             **common)
    batch = max(32, args.concurrency // args.replicas + 8)
    scripted = ScriptedEngineConfig(vocab_size=VOCAB, step_s=args.step_s, max_batch=batch, max_context=4096,
                                    page_size=16, num_pages=1024)
    return ClusterConfig(engine="scripted", scripted=scripted, **common)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("scripted", "tiny"), default="scripted")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--coordinator-kills", type=int, default=3)
    ap.add_argument("--router-kills", type=int, default=3)
    ap.add_argument("--kill-every", type=float, default=1.5, help="seconds of steady traffic before each kill")
    ap.add_argument("--overlap", action="store_true",
                    help="kill without waiting for killed replicas to be ready again (kills land during restarts)")
    ap.add_argument("--concurrency", type=int, default=None, help="concurrent streams (kill: 24, soak: 1000)")
    ap.add_argument("--min-tokens", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--step-s", type=float, default=0.02, help="scripted decode step time")
    ap.add_argument("--restart-delay", type=float, default=0.5)
    ap.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="soak for this long instead of killing")
    ap.add_argument("--workdir", default=str(Path.home() / ".cache" / "ttdist" / "bench-chaos"))
    args = ap.parse_args()
    if args.concurrency is None:
        args.concurrency = 1000 if args.soak else 24
    if args.soak and args.model != "scripted":
        ap.error("--soak runs on scripted replicas")
    deployment = deploy(cluster_config(args))
    try:
        wait_serving(deployment)
        asyncio.run(soak_mode(args, deployment) if args.soak else kill_mode(args, deployment))
    finally:
        deployment.shutdown()


if __name__ == "__main__":
    main()
