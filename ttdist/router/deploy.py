"""Bring a whole cluster up (coordinator, replicas, router) and take it down again.

``deploy(config)`` connects to Ray (a fresh local cluster unless ``address`` names one),
starts the coordinator as a named actor on this node, waits for its replicas, then starts
the router actors (``routers``, 1 by default) on this node, all serving the public port
(SO_REUSEPORT: the kernel spreads connections over them). ``Deployment.shutdown()`` stops
everything it started, including the local Ray processes, and nothing else; with
``drain_timeout_s`` it first drains the routers (NOT_SERVING, new requests UNAVAILABLE,
streams in flight finish up to the timeout).

The coordinator and router actors are supervised: Ray restarts them when their process dies
(``max_restarts=-1``), the router on the same port (a port of 0 is fixed to a free one
before the actor is created). Both are owned by this driver, so they end with it.

Every wait for an actor has a timeout (``get_within``): one that does not answer in time raises
``ActorTimeoutError`` naming the actor and the call instead of blocking the driver.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace

import ray
from ray.exceptions import GetTimeoutError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ttdist.dashboard.events import EventKind
from ttdist.router.actor import RouteSpec, RouterActor
from ttdist.router.router import RouterConfig
from ttdist.router.policies import UnknownPolicyError, make_policy
from ttdist.router.stream_interval import StreamInterval
from ttdist.runtime.auth import new_cluster_token
from ttdist.runtime.config import NICENESS_ENV, ClusterConfig
from ttdist.runtime.coordinator import Coordinator
from ttdist.runtime.procs import descendants
from ttdist.runtime.replica import COORDINATOR_NAME, NAMESPACE, replica_actor_name


CALL_TIMEOUT_S = 60.0          # an actor call that does no long work: a snapshot, a path, a port
ROUTER_START_TIMEOUT_S = 60.0  # a router actor starts serving (its first table from the coordinator)
STOP_TIMEOUT_S = 15.0          # an actor stops what it runs at shutdown
SERVING_TIMEOUT_S = 10.0       # a router says whether it serves


class DeployError(RuntimeError):
    """The cluster did not come up (or does not answer); the message says which part and why."""


class ActorTimeoutError(DeployError, TimeoutError):
    """An actor of the cluster did not answer a call in time; the message names the call."""


def get_within(refs, timeout_s: float, what: str):
    """``ray.get(refs)`` within ``timeout_s``; past it ``ActorTimeoutError`` naming ``what``."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        raise ActorTimeoutError(f"{what} did not answer within {timeout_s:g} s") from None


@dataclass
class Deployment:
    config: ClusterConfig
    coordinator: object
    router: object
    port: int
    dashboard_url: str
    started_ray: bool
    http_port: int | None = None        # the OpenAI HTTP API; None = off
    routers: list = field(default_factory=list)   # every router actor (``router`` is the first); one port

    def __post_init__(self) -> None:
        if not self.routers:
            self.routers = [self.router]

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def http_url(self) -> str | None:
        """Where the OpenAI HTTP API answers (``.../v1`` is the client's base URL); None = off."""
        if self.http_port is None:
            return None
        return f"{'https' if self.config.api.tls else 'http'}://{self.config.host}:{self.http_port}"

    def snapshot(self):
        """The dashboard's ``ClusterSnapshot`` of this cluster, now."""
        return get_within(self.coordinator.snapshot.remote(), CALL_TIMEOUT_S, "the coordinator's snapshot()")

    def restart_replica(self, replica_id: str, drain_timeout_s: float = 30.0) -> int:
        """Restart a replica on purpose, draining it first (see ``Coordinator.drain_replica``);
        returns how many of its streams had to move to other replicas."""
        return get_within(self.coordinator.drain_replica.remote(replica_id, drain_timeout_s),
                          drain_timeout_s + CALL_TIMEOUT_S, f"the coordinator's drain_replica({replica_id!r})")

    def drain(self, timeout_s: float) -> int:
        """Drain the router: NOT_SERVING, new requests UNAVAILABLE, wait up to ``timeout_s`` for
        the streams in flight; returns how many were still running."""
        try:
            drained = [r.drain.remote(timeout_s) for r in self.routers]
            return sum(get_within(drained, timeout_s + STOP_TIMEOUT_S, "the routers' drain()"))
        except Exception:  # noqa: BLE001 - a router that cannot drain is stopped anyway
            return -1

    def shutdown(self, drain_timeout_s: float = 0.0) -> None:
        if drain_timeout_s > 0:
            self.drain(drain_timeout_s)
        replica_ids = [f"replica-{index}" for index in range(self.config.num_replicas)]
        try:   # an autoscaled pool's replicas have ids of their own
            records = ray.get(self.coordinator.replicas.remote(), timeout=STOP_TIMEOUT_S)
            replica_ids = sorted({*replica_ids, *(r.replica_id for r in records)})
        except Exception:  # noqa: BLE001 - the coordinator is gone: the launch's ids are all we know
            pass
        for stopped in (*(r.stop.remote() for r in self.routers), self.coordinator.shutdown.remote()):
            try:
                ray.get(stopped, timeout=STOP_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - keep tearing down whatever is left
                pass
        for actor in (*self.routers, self.coordinator):
            ray.kill(actor, no_restart=True)
        for replica_id in replica_ids:   # detached: gone with the coordinator only if it stopped them
            try:
                ray.kill(ray.get_actor(replica_actor_name(replica_id), namespace=NAMESPACE), no_restart=True)
            except ValueError:
                pass
        if self.started_ray:
            ray.shutdown()


LOCAL_RAY_TRIES = 3   # Ray gives a local raylet a fixed 30 s to register; a loaded 2-core host can miss it twice


def connect(address: str | None) -> bool:
    """Join Ray at ``address`` or start a local one; True if this call started it.

    A local start whose raylet misses Ray's registration window is tried again (up to
    ``LOCAL_RAY_TRIES`` starts), after the processes that attempt started (children of this
    process, found by PID) are killed."""
    if ray.is_initialized():
        return False
    local = address in (None, "local")
    for attempt in range(1, LOCAL_RAY_TRIES + 1):
        before = descendants()
        try:
            ray.init(
                address=address or "local", namespace=NAMESPACE, include_dashboard=False,
                logging_level="WARNING", log_to_driver=True,
            )
            return True
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for a slow raylet
            if not local or attempt == LOCAL_RAY_TRIES or "timed out during startup" not in str(exc):
                raise
            print(f"ttdist: the local Ray's raylet missed its registration (start {attempt} of "
                  f"{LOCAL_RAY_TRIES}); starting it again", file=sys.stderr)
            ray.shutdown()
            _kill_children_since(before)
    raise AssertionError("unreachable")


def _kill_children_since(before: set[int]) -> None:
    for pid in descendants() - before:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def fixed_port(host: str, port: int) -> int:
    """``port``, or a free one on ``host`` for 0, so a restarted router serves the same port."""
    if port:
        return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def deploy(config: ClusterConfig, *, address: str | None = None, ready_timeout_s: float = 600.0) -> Deployment:
    config.check()
    for i, model in enumerate(config.models):   # the one-model form's policy is checked below, as it was
        try:
            make_policy(model.policy)
        except UnknownPolicyError as err:
            raise UnknownPolicyError(f"models[{i}].policy: {err}") from None
    make_policy(config.served[0].policy)
    if not config.cluster_token:        # replicas accept only callers that present it
        config = replace(config, cluster_token=new_cluster_token())
    started = connect(address)
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    coordinator = ray.remote(Coordinator).options(
        name=COORDINATOR_NAME, namespace=NAMESPACE, num_cpus=0, max_concurrency=1000, scheduling_strategy=here,
        max_restarts=-1,
    ).remote(config)
    routers: list = []
    try:
        get_within(coordinator.start.remote(), ready_timeout_s, "the coordinator's start()")
        ready = get_within(coordinator.wait_ready.remote(config.num_replicas, ready_timeout_s),
                           ready_timeout_s + CALL_TIMEOUT_S, "the coordinator's wait_ready()")
        if ready == 0 and config.num_replicas > 0:   # an autoscaled pool may start empty (min_replicas: 0)
            snap = get_within(coordinator.snapshot.remote(), CALL_TIMEOUT_S, "the coordinator's snapshot()")
            why = "; ".join(f"{e.replica_id}: {e.message}" for e in snap.events if e.kind == EventKind.REPLICA_FAILED)
            raise DeployError(f"no replica became ready ({why or 'no reason reported'})")
        router_config = RouterConfig(policy=config.policy, default_max_tokens=config.default_max_tokens,
                                     cluster_token=config.cluster_token, ready_wait_s=config.ready_wait_s,
                                     stream_interval=StreamInterval(config.stream_interval, config.stream_interval_ms),
                                     routers=config.routers, tracing=config.tracing)
        cards = get_within(coordinator.model_cards.remote(), CALL_TIMEOUT_S, "the coordinator's model_cards()")
        dirs = get_within([coordinator.model_dir_path.remote(c.model_id) for c in cards], CALL_TIMEOUT_S,
                          "the coordinator's model_dir_path()")
        specs = tuple(RouteSpec(card.model_id, model.policy, path, model.chat_template)
                      for card, path, model in zip(cards, dirs, config.served))
        env = {NICENESS_ENV: str(config.niceness)} if config.niceness is not None else {}
        api = config.api if config.api.http_port is None else replace(
            config.api, http_port=fixed_port(config.host, config.api.http_port))
        public_port = fixed_port(config.host, config.port)
        for index in range(config.routers):   # several: all serve public_port (SO_REUSEPORT)
            routers.append(ray.remote(RouterActor).options(
                num_cpus=0, max_concurrency=1000, scheduling_strategy=here, runtime_env={"env_vars": env},
                max_restarts=-1,
            ).remote(replace(router_config, router_id=f"router-{index}"), config.host, public_port, specs, api))
        port = get_within([r.start.remote() for r in routers], ROUTER_START_TIMEOUT_S, "the routers' start()")[0]
        http_port = get_within(routers[0].http_port.remote(), CALL_TIMEOUT_S, "the router's http_port()")
        url = get_within(coordinator.dashboard_url.remote(), CALL_TIMEOUT_S, "the coordinator's dashboard_url()")
    except BaseException:
        for router in routers:
            ray.kill(router, no_restart=True)
        ray.kill(coordinator, no_restart=True)
        if started:
            ray.shutdown()
        raise
    return Deployment(config, coordinator, routers[0], port, url, started, http_port, routers)


def wait_serving(deployment: Deployment, timeout_s: float = 30.0) -> None:
    """Block until the public port answers health SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    if deployment.config.api.tls or len(deployment.routers) > 1:   # TLS, or one check reaches one router: ask them
        while time.monotonic() < deadline:
            serving = [r.serving.remote() for r in deployment.routers]
            if all(get_within(serving, SERVING_TIMEOUT_S, "the routers' serving()")):
                return
            time.sleep(0.05)
        raise DeployError(f"the router at {deployment.address} is not serving after {timeout_s} s")
    with grpc.insecure_channel(deployment.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise DeployError(f"the router at {deployment.address} is not SERVING after {timeout_s} s")
