"""``ttdist serve``: run a cluster in the foreground until SIGINT / SIGTERM.

With no flags it serves SmolLM2-135M-Instruct on a local Ray cluster with one simulated
N300 (1x2) mesh replica, the gRPC API on 127.0.0.1:50051 and the dashboard on :8480.

SIGINT / SIGTERM drains first: the router's health goes NOT_SERVING, new requests get
UNAVAILABLE and the streams in flight finish (up to ``--drain-timeout`` seconds; a second
signal cuts the drain short). Then it stops the router, the replicas, the coordinator and the
local Ray processes it started, and nothing else.

Replica failures, restarts and give-ups are printed on stderr as they happen (``ClusterConsole``).
A failure that retrying cannot fix (a ``PermanentError``: a bad checkpoint, a mesh the model does
not fit, a backend not installed) is not retried; once no replica can ever start, ``serve`` (and
``launch``) exits with code 2 and the reason, at start-up or later.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ttdist.cli import EXIT_USAGE, CommandError
from ttdist.cli.api_flags import add_api_args, api_from_args

EPILOG = """examples:
  ttdist serve
  ttdist serve --replicas 4 --mesh n300 --policy least_load
  ttdist serve --model ./my-llama --mesh 2x4 --port 50052 --dashboard-port 0
  ttdist serve --backend ttnn --emulate --mesh t3k --model ./my-llama   # the ttnn backend on emulated chips
"""


def register(subparsers) -> None:
    from ttdist.runtime.config import DISPATCH_CORES

    p = subparsers.add_parser(
        "serve", help="serve a model on a Ray cluster (foreground; Ctrl-C stops everything)",
        description="Start the coordinator, N replica actors (one mesh each) and the router on Ray, then "
                    "serve the gRPC API until interrupted.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="checkpoint directory, or 'smollm2' (default)")
    p.add_argument("--mesh", default="n300", help="n150, n300, t3k, tg or RxC (default %(default)s)")
    p.add_argument("--replicas", type=int, default=1, help="number of replicas (default %(default)s)")
    p.add_argument("--backend", default="sim", choices=("sim", "ttnn"), help="mesh backend (default %(default)s)")
    p.add_argument("--emulate", action="store_true",
                   help="with --backend ttnn: run on emulated chips of --mesh (no ttnn package or chips needed)")
    p.add_argument("--dispatch-core", default="auto", choices=DISPATCH_CORES,
                   help="ttnn: cores that dispatch programs (default %(default)s: what the platform recommends)")
    p.add_argument("--command-queues", type=int, default=0, choices=(0, 1, 2),
                   help="ttnn: command queues per mesh; with 2 the KV tiers' page transfers use the second "
                        "(default 0: 2 on chips, 1 on mocked chips)")
    p.add_argument("--policy", default="round_robin",
                   help="round_robin, least_load, power_of_two or cache_aware (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address the API and dashboard listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (default %(default)s; 0 = any free)")
    p.add_argument("--dashboard-port", type=int, default=8480,
                   help="dashboard HTTP port (default %(default)s; 0 = any free; -1 = no dashboard)")
    p.add_argument("--address", default=None, help="join the Ray cluster at this address instead of starting one")
    p.add_argument("--dtype", default="auto",
                   help="precision: a preset (accuracy, performance), a dtype for every matmul (float32, bfloat16, "
                        "bfloat8_b, bfloat4_b), or auto (default): float32 on sim, accuracy on ttnn")
    p.add_argument("--max-kv-pages", type=int, default=512, help="cap on KV pages per replica (default %(default)s)")
    p.add_argument("--restart-delay", type=float, default=2.0, metavar="SECONDS",
                   help="how long a failed replica shows as failed before it is restarted (default %(default)s)")
    p.add_argument("--no-restart", action="store_true", help="leave failed replicas failed (no restarts)")
    p.add_argument("--ready-wait", type=float, default=30.0, metavar="SECONDS",
                   help="how long a request without a deadline waits for a ready replica (default %(default)s)")
    p.add_argument("--routers", type=int, default=1, metavar="N",
                   help="router processes serving the public port together (default %(default)s)")
    p.add_argument("--stream-interval", type=int, default=1, metavar="K",
                   help="send clients at most one chunk per K tokens (default %(default)s: every token)")
    p.add_argument("--stream-interval-ms", type=int, default=0, metavar="T",
                   help="...or per T milliseconds, whichever comes first (default %(default)s: no time bound)")
    p.add_argument("--logprobs-mode", default="raw", choices=("raw", "processed"),
                   help="logprobs of generated tokens: the model's raw distribution (default) or the processed one "
                        "(after temperature)")
    p.add_argument("--generation-config", default="auto", choices=("auto", "vllm"),
                   help="auto (default): a request that leaves temperature, top_k, top_p or repetition_penalty out "
                        "gets the checkpoint's generation_config.json value; vllm: ignore the file")
    p.add_argument("--kv-host-bytes", default="auto", metavar="SIZE",
                   help="each replica's host-memory KV tier: KV pages evicted from the chips are kept there and "
                        "restored instead of prefilled again; bytes, 512MiB, 8GB, 10%% of RAM, auto (default: 10%%), 0 = off")
    p.add_argument("--kv-node-bytes", default="0", metavar="SIZE",
                   help="a node KV tier the replicas of one host share, so one replica restores what another "
                        "computed (default 0: off)")
    p.add_argument("--kv-node-dir", default=None, metavar="DIR", help="where the node tier keeps its files "
                                                                      "(default /dev/shm/ttdist-kv: memory)")
    add_api_args(p)
    p.add_argument("--otlp-traces-endpoint", default="", metavar="URL",
                   help="send OpenTelemetry traces of requests over OTLP/gRPC to this collector, e.g. "
                        "http://localhost:4317 (default: no tracing)")
    p.add_argument("--otlp-traces-sample-ratio", type=float, default=1.0, metavar="R",
                   help="share of new traces sampled, 0..1 (default %(default)s; a request with a traceparent "
                        "follows its sampled flag)")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGINT/SIGTERM, how long streams in flight may take to finish (default %(default)s)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from ttdist.runtime.config import ClusterConfig, ClusterConfigError, HealthConfig, ReplicaGroup
    from ttdist.tracing import TracingConfig

    try:
        config = ClusterConfig(
            model=args.model, groups=(ReplicaGroup(count=args.replicas, mesh=args.mesh, backend=args.backend,
                                              dispatch_core=args.dispatch_core, command_queues=args.command_queues,
                                              emulate=args.emulate),),
            policy=args.policy, host=args.host, port=args.port,
            dashboard_port=None if args.dashboard_port < 0 else args.dashboard_port,
            dtype=args.dtype, max_kv_pages=args.max_kv_pages, api=api_from_args(args),
            stream_interval=args.stream_interval, stream_interval_ms=args.stream_interval_ms, routers=args.routers,
            ready_wait_s=args.ready_wait, logprobs_mode=args.logprobs_mode,
            generation_config=args.generation_config, kv_host_bytes=args.kv_host_bytes, kv_node_bytes=args.kv_node_bytes,
            **({"kv_node_dir": args.kv_node_dir} if args.kv_node_dir else {}),
            health=HealthConfig(restart=not args.no_restart, restart_delay_s=args.restart_delay),
            tracing=TracingConfig(otlp_traces_endpoint=args.otlp_traces_endpoint,
                                  sample_ratio=args.otlp_traces_sample_ratio),
        )
        config.check()
    except ClusterConfigError as err:
        flag = next((f for field, f in _FLAGS.items() if str(err).startswith(field)), None)
        raise CommandError(f"{flag}: {err}" if flag else str(err), EXIT_USAGE) from None
    return config


_FLAGS = {   # the config field an error names -> the flag that set it
    "replicas[0].count": "--replicas", "replicas[0].mesh": "--mesh", "replicas[0].emulate": "--emulate", "dtype": "--dtype", "model": "--model",
    "port": "--port", "dashboard_port": "--dashboard-port", "max_kv_pages": "--max-kv-pages",
    "health.restart_delay_s": "--restart-delay", "ready_wait_s": "--ready-wait", "stream_interval_ms": "--stream-interval-ms",
    "stream_interval": "--stream-interval", "tracing.otlp_traces_endpoint": "--otlp-traces-endpoint",
    "tracing.sample_ratio": "--otlp-traces-sample-ratio",
    "stream_interval": "--stream-interval", "kv_host_bytes": "--kv-host-bytes", "kv_node_bytes": "--kv-node-bytes",
}


def _drain(deployment, timeout_s: float, signals: list) -> None:
    """Drain the router (see ``Deployment.drain``) in the background; a further signal stops waiting."""
    if timeout_s <= 0:
        return
    seen = len(signals)
    print(f"ttdist: draining (streams in flight may finish for up to {timeout_s:g} s; Ctrl-C again to stop now)",
          file=sys.stderr, flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (deployment.drain(timeout_s), done.set()), daemon=True).start()
    while not done.wait(0.2) and len(signals) == seen:
        pass


def run_cluster(config, address: str | None, drain_timeout_s: float = 30.0) -> int:
    """Connect to Ray, follow the cluster's events, deploy, then serve until SIGINT/SIGTERM (or
    until no replica can ever start: exit 2), drain, tear everything down."""
    import ray

    from ttdist.cli.cluster_console import ClusterConsole
    from ttdist.router.deploy import connect
    from ttdist.runtime.config import ClusterConfigError
    from ttdist.runtime.preflight import PreflightError, preflight

    try:
        config.check_model()
        preflight(config, local=address is None)
    except (ClusterConfigError, PreflightError) as err:
        raise CommandError(str(err), EXIT_USAGE) from None
    stop = threading.Event()
    console = ClusterConsole(on_none_can_start=stop.set)
    started_ray = connect(address)   # this process owns Ray: the console stops before Ray does
    console.start()
    try:
        return _serve(config, address, drain_timeout_s, stop, console)
    finally:
        console.stop()
        if started_ray:
            ray.shutdown()


def _deploy(config, address: str | None):
    """``deploy``, its failures as CommandErrors: a PermanentError (no replica can ever start, a
    bad checkpoint) is bad input, exit 2, with its one-line reason."""
    from ray.exceptions import RayTaskError

    from ttdist.errors import PermanentError
    from ttdist.router.deploy import DeployError, deploy
    from ttdist.router.policies import UnknownPolicyError
    from ttdist.runtime.registry import NoReplicaCanStartError, one_line

    try:
        return deploy(config, address=address)
    except UnknownPolicyError as err:
        raise CommandError(str(err), EXIT_USAGE) from None
    except DeployError as err:
        raise CommandError(str(err)) from None
    except RayTaskError as err:   # raised in the coordinator
        if not isinstance(err.cause, PermanentError):
            raise
        why = str(err.cause) if isinstance(err.cause, NoReplicaCanStartError) else one_line(err.cause)
        raise CommandError(f"cannot serve {_names(config)}: {why}", EXIT_USAGE) from None


def _names(config) -> str:
    """The served models as messages name them: ``smollm2``, or ``a, b`` for several."""
    return ", ".join(m.served_name for m in config.served)


def _serve(config, address: str | None, drain_timeout_s: float, stop: threading.Event, console) -> int:
    from ttdist.router.deploy import wait_serving

    deployment = _deploy(config, address)
    # after Ray started (it installs its own handlers) and deployed
    signals: list[int] = []

    def on_signal(signum, _frame) -> None:
        signals.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        wait_serving(deployment)
        policies = ", ".join(dict.fromkeys(m.policy for m in config.served))
        print(f"ttdist: serving {_names(config)} on {deployment.address} "
              f"({config.num_replicas} replica(s), policy {policies})", flush=True)
        if deployment.dashboard_url:
            print(f"ttdist: dashboard at {deployment.dashboard_url}", flush=True)
        if deployment.http_url:
            print(f"ttdist: OpenAI API at {deployment.http_url}/v1", flush=True)
        while not stop.wait(0.5):
            pass
        if console.none_can_start:
            raise CommandError(f"no replica of {_names(config)} can start any more: {console.none_can_start}", EXIT_USAGE)
        _drain(deployment, drain_timeout_s, signals)
        print("ttdist: shutting down", file=sys.stderr, flush=True)
    finally:
        deployment.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.drain_timeout >= 0:
        raise CommandError(f"--drain-timeout must be >= 0 seconds, got {args.drain_timeout}", EXIT_USAGE)
    return run_cluster(config_from_args(args), args.address, args.drain_timeout)
