"""Several models behind one public port, without Ray: each model's scripted replicas behind its own
``Router`` (own policy), joined by ``ModelRouters`` and served over real gRPC."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.generation import collect, request
from tests.support.scripted import expected_tokens
from tests.support.stack import SCRIPTED_CARD, make_stack, own_status
from ttdist.router.chat import ChatPrompter
from ttdist.router.models import ModelRoute, ModelRouters
from ttdist.router.router import Router, RouterConfig
from ttdist.router.service import start_router_server
from ttdist.runtime.scripted_engine import ScriptedEngine, ScriptedEngineConfig
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc

POLICIES = {"alpha": "cache_aware", "beta": "least_load"}
COUNTS = {"alpha": 1, "beta": 2}


@pytest.fixture
async def served():
    """Per model: its replicas (a stack), its own router over their table; one server for both."""
    stacks, routes = {}, {}
    for name, n in COUNTS.items():
        stacks[name] = await make_stack(lambda i: ScriptedEngine(ScriptedEngineConfig(vocab_size=1000)), n,
                                        card=replace(SCRIPTED_CARD, model_id=name), status=own_status)
        router = Router(RouterConfig(refresh_s=0.05, policy=POLICIES[name], model=name), stacks[name].source)
        routes[name] = ModelRoute(router, ChatPrompter(None, None))
    models = ModelRouters(routes)
    server = await start_router_server(models, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield models, stacks, pb_grpc.GenerationStub(channel), channel
    await channel.close()
    await server.stop(0)
    await models.stop()
    for stack in stacks.values():
        await stack.close()


def finished(stack) -> int:
    return sum(e.stats().requests_finished_total for e in stack.engines)


async def test_requests_go_to_their_models_replicas(served):
    models, stacks, stub, _ = served
    prompt = [5, 6, 7]
    for name, other in (("alpha", "beta"), ("beta", "alpha"), ("", "beta")):   # "": the first model
        before = {n: finished(s) for n, s in stacks.items()}
        ids, complete = await collect(stub, request(prompt, 4, model=name))
        assert ids == expected_tokens(prompt, 4, vocab=1000)
        mine = name or "alpha"
        assert finished(stacks[mine]) == before[mine] + 1 and finished(stacks[other]) == before[other]


async def test_unknown_model_is_not_found_naming_the_served_ones(served):
    _, _, stub, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, request([1, 2], 2, model="gamma"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "model: unknown model 'gamma'; this server serves 'alpha', 'beta'"


async def test_list_models_and_status_show_every_model(served):
    models, _, stub, _ = served
    assert [m.id for m in (await stub.ListModels(pb.ListModelsRequest())).models] == ["alpha", "beta"]
    status = await stub.GetClusterStatus(pb.ClusterStatusRequest())
    assert [r.model for r in status.replicas] == ["alpha", "beta", "beta"]
    assert [m.id for m in status.models] == ["alpha", "beta"] and status.model == "alpha"
    # each model has its own policy object (and so its own state: cache_aware's prefix tree)
    policies = [route.router.policy for route in models.routes.values()]
    assert [p.name for p in policies] == ["cache_aware", "least_load"] and policies[0] is not policies[1]


async def test_health_serves_while_any_model_has_a_ready_replica(served):
    models, stacks, _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == serving
    stacks["alpha"].set_state(0, "failed")
    await models.routes["alpha"].router.refresh()
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == serving   # beta still serves
    for i in range(2):
        stacks["beta"].set_state(i, "starting")
    await models.routes["beta"].router.refresh()
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.NOT_SERVING
