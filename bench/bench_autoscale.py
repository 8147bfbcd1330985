"""Autoscaling under a staircase load (1x -> 4x -> 1x) on scripted replicas, against a static
cluster sized for the peak.

Scripted replicas (``--step-ms`` per decode step, ``--batch`` users at once) on a local Ray
cluster; closed-loop users send greedy requests of ``--max-tokens`` back to back: ``--users``
of them, then 4x as many, then ``--users`` again, ``--phase-s`` each. The autoscaled pool
(``min_replicas`` 1, ``max_replicas`` 4, target ``ongoing_requests`` = ``--batch``) is sampled
twice a second; it prints the replica count over time (``--plot FILE`` draws it), when the
pool settled after each step (its final count, all serving), and for each replica a scale-up
started its reaction, load step -> its first token to a user, split into the decision (step
-> the autoscaler's decision), the coordinator's ``ColdStart`` phases and the first token
(serving -> a router sent it a request and its first token came back), with the p50 and max
over those replicas; then goodput (requests per second whose TTFT met ``--slo-ms``) and
replica-seconds used (replicas in the pool, starting ones included) against the same load on
a static cluster of 4 replicas.

    .venv/bin/python bench/bench_autoscale.py [--phase-s 20] [--users 8] [--batch 8] [--upscale-delay-s 2] [--plot autoscale.png]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import grpc  # noqa: E402

from ttdist.router.deploy import deploy, wait_serving  # noqa: E402
from ttdist.runtime.autoscale.config import AutoscaleConfig  # noqa: E402
from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup  # noqa: E402
from ttdist.runtime.scripted_engine import ScriptedEngineConfig  # noqa: E402
from ttdist.v1 import generation_pb2 as pb  # noqa: E402
from ttdist.v1 import generation_pb2_grpc as pb_grpc  # noqa: E402


@dataclass
class Run:
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)   # (t, in pool, ready, ongoing)
    ttfts: list[float] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0
    steps: list[float] = field(default_factory=list)           # unix seconds each phase began
    first_token: dict[str, float] = field(default_factory=dict)   # replica -> unix seconds of its first token
    status: object = None                                       # the pool's PoolStatus at the end (autoscaled)


def drive(address: str, phases: list[tuple[int, float]], max_tokens: int, coordinator) -> Run:
    """Closed-loop users, ``phases`` of (users, seconds); samples the pool every 0.5 s."""
    import ray

    run, stop = Run(), threading.Event()
    active = [0]
    lock = threading.Lock()
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.GenerationStub(channel)

    def user(index: int) -> None:
        n = 0
        while not stop.is_set():
            if index >= active[0]:
                time.sleep(0.05)
                continue
            req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[index % 900 + 1, n % 900 + 1, 7]), stream=True,
                                     sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True))
            sent, first, count, replica = time.time(), None, 0, ""
            try:
                for resp in stub.Generate(req, timeout=120):
                    if resp.WhichOneof("kind") == "chunk":
                        first = first or time.time()
                        count += len(resp.chunk.token_ids)
                    elif resp.WhichOneof("kind") == "complete":
                        replica = resp.complete.replica_id
            except grpc.RpcError:
                count = -1
            with lock:
                if count == max_tokens and first is not None:
                    run.ttfts.append(first - sent)
                    run.first_token[replica] = min(first, run.first_token.get(replica, first))
                else:
                    run.failed += 1
            n += 1

    peak = max(u for u, _ in phases)
    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(peak)]
    for t in threads:
        t.start()
    start = time.monotonic()
    for users, seconds in phases:
        active[0] = users
        run.steps.append(time.time())
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            replicas = ray.get(coordinator.snapshot.remote(), timeout=30).replicas
            run.samples.append((time.monotonic() - start, sum(r.state != "draining" for r in replicas),
                                sum(r.state == "ready" for r in replicas), sum(r.running + r.waiting for r in replicas)))
            time.sleep(0.5)
    run.seconds = time.monotonic() - start
    stop.set()
    for t in threads:
        t.join(150)
    channel.close()
    return run


def served(config: ClusterConfig, phases, max_tokens: int) -> Run:
    import ray

    deployment = deploy(config)
    try:
        wait_serving(deployment, 60)
        run = drive(deployment.address, phases, max_tokens, deployment.coordinator)
        run.status = ray.get(deployment.coordinator.autoscale_status.remote(), timeout=30)
        return run
    finally:
        deployment.shutdown()
        if ray.is_initialized():
            ray.shutdown()


def report(name: str, run: Run, slo_s: float) -> tuple[float, float]:
    good = sum(t <= slo_s for t in run.ttfts) / run.seconds
    replica_s = sum(pool for _, pool, _, _ in run.samples) * (run.seconds / max(1, len(run.samples)))
    print(f"{name}: {len(run.ttfts)} requests, {run.failed} failed or cut, goodput {good:.2f} req/s "
          f"(TTFT <= {slo_s * 1000:.0f} ms), replica-seconds {replica_s:.0f}")
    return good, replica_s


def reaction(run: Run, phases) -> list[float]:
    """Per load step: seconds from the step until the pool's count settled and all of it served."""
    out, t0 = [], 0.0
    for (users, seconds), nxt in zip(phases, phases[1:]):
        t0 += seconds
        after = [(t, pool, ready) for t, pool, ready, _ in run.samples if t >= t0 and t < t0 + nxt[1]]
        if not after:
            continue
        final = after[-1][1]
        settled = next((t for t, pool, ready in after if pool == final and ready == final), None)
        if settled is not None:
            out.append(settled - t0)
    return out


def scale_ups(run: Run) -> list[tuple[str, float, float, list[tuple[str, float]]]]:
    """Per replica a scale-up started: (its id, reaction: its load step -> its first token, the step ->
    the decision, its phases from the decision to its first token)."""
    out = []
    for took in run.status.cold_starts if run.status is not None else ():
        step = max((t for t in run.steps if t <= took.decided), default=run.steps[0])
        serving = took.decided + took.total_s
        first = run.first_token.get(took.replica_id)
        if first is None:
            continue
        phases = [("placement", took.placement_s),
                  ("process start" + (" (pre-started)" if took.prestarted else ""), took.process_start_s),
                  ("engine start", took.weight_load_s + took.kv_sizing_s + took.engine_start_s),
                  ("registration", took.registration_s), ("first token", first - serving)]
        out.append((took.replica_id, first - step, took.decided - step, phases))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase-s", type=float, default=20.0)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--step-ms", type=float, default=14.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--slo-ms", type=float, default=500.0)
    ap.add_argument("--upscale-delay-s", type=float, default=2.0)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    phases = [(args.users, args.phase_s), (4 * args.users, args.phase_s), (args.users, args.phase_s)]
    engine = ScriptedEngineConfig(vocab_size=1000, step_s=args.step_ms / 1000, max_context=4096, page_size=16,
                                  num_pages=1024)
    base = ClusterConfig(engine="scripted", scripted=engine, groups=(ReplicaGroup(count=4),), port=0, dashboard_port=None,
                         max_batch=args.batch, policy="least_load", health=HealthConfig(heartbeat_s=0.25))
    scale = AutoscaleConfig(min_replicas=1, max_replicas=4, target=args.batch, upscale_delay_s=args.upscale_delay_s,
                            downscale_delay_s=2 * args.phase_s / 5, drain_timeout_s=60.0)
    auto = served(replace(base, groups=(ReplicaGroup(),), autoscale=scale), phases, args.max_tokens)
    print("t (s)  users  replicas (in pool / ready)  ongoing (running + waiting on the replicas)")
    ends = [sum(s for _, s in phases[:i + 1]) for i in range(len(phases))]
    for t, pool, ready, ongoing in auto.samples[::4]:
        users = phases[min(sum(t >= e for e in ends), len(phases) - 1)][0]
        print(f"{t:5.1f}  {users:5d}  {pool} / {ready}  {ongoing}")
    for d in auto.status.decisions:
        print(f"decision at {d.time - auto.steps[0]:5.1f} s: {d.previous} -> {d.replicas}: {d.reason}")
    times = reaction(auto, phases)
    print("pool settled (load step -> the pool's count final and all of it serving): "
          + ", ".join(f"{x:.1f} s" for x in times))
    ups = scale_ups(auto)
    for rid, react, decision, steps in ups:
        print(f"  {rid}: {react:.2f} s = decision {decision:.2f} s + "
              + " + ".join(f"{name} {s:.2f} s" for name, s in steps))
    if ups:
        react = sorted(r for _, r, _, _ in ups)
        print(f"reaction (load step -> a new replica's first token), {len(react)} replicas: "
              f"p50 {statistics.median(react):.2f} s, max {react[-1]:.2f} s (target <= 10 s)")
    static = served(base, phases, args.max_tokens)
    good_a, rs_a = report("autoscaled (1..4)", auto, args.slo_ms / 1000)
    good_s, rs_s = report("static (4)", static, args.slo_ms / 1000)
    print(f"autoscaled vs static: goodput {good_a / good_s:.2f}x (target >= 0.95), replica-seconds "
          f"{rs_a / rs_s:.2f}x (target <= 0.70)")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        ax.step([t for t, *_ in auto.samples], [p for _, p, _, _ in auto.samples], where="post", label="in pool")
        ax.step([t for t, *_ in auto.samples], [r for _, _, r, _ in auto.samples], where="post", label="ready")
        ax.set_xlabel("seconds")
        ax.set_ylabel("replicas")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
