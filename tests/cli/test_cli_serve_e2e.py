"""End to end: a real ``ttdist serve`` (Ray, coordinator, replica on a simulated 1x2 mesh, router)
on a tiny random Llama, driven by the Python client and by the ``ttdist`` CLI.

The server is started once for the module. Before it is started, a client call is already
retrying against its closed port: the router comes up late and that call must still succeed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import urllib.request

import pytest

from tests.support.cli import CLI, ROOT, free_port, interrupt, ttdist
from tests.support.waiting import wait_for
from ttdist.client import AsyncClient, Client, DeadlineExceeded, InvalidRequest, NotFound, RetryPolicy

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
LATE_PROMPT = "Retry until the router is up"


class Served:
    def __init__(self, address: str, dashboard: str, late: dict):
        self.address, self.dashboard, self.late = address, dashboard, late

    def dashboard_status(self) -> dict:
        with urllib.request.urlopen(f"{self.dashboard}/api/status", timeout=10) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    port, dash_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    late: dict = {}

    def call_before_the_router_exists():
        retry = RetryPolicy(max_attempts=1000, initial_backoff_s=0.2, max_backoff_s=1.0)
        with Client(address, retry=retry, timeout=400) as client:
            try:
                late["done"] = client.generate(LATE_PROMPT, max_tokens=6)
            except Exception as e:  # reported by test_call_started_before_the_router_succeeds
                late["error"] = e

    caller = threading.Thread(target=call_before_the_router_exists, daemon=True)
    caller.start()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [*CLI, "serve", "--model", str(tiny_checkpoint), "--mesh", "1x2", "--replicas", "1", "--port", str(port),
         "--dashboard-port", str(dash_port), "--drain-timeout", "600", "--http-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
             "TTDIST_CACHE": str(tmp_path_factory.mktemp("cache"))}, cwd=ROOT)
    try:
        with Client(address) as client:
            try:
                client.wait_ready(timeout=400)
            except DeadlineExceeded:
                pytest.fail(f"ttdist serve never became ready; its output:\n{log_path.read_text()[-4000:]}")
        caller.join(400)
        served = Served(address, f"http://127.0.0.1:{dash_port}", late)
        served.process, served.log_path = server, log_path
        yield served
    finally:
        interrupt(server)
        log.close()


def test_call_started_before_the_router_succeeds(served):
    assert "error" not in served.late, served.late.get("error")
    done = served.late["done"]
    assert (done.finish_reason, len(done.token_ids), done.usage.completion_tokens) == ("length", 6, 6)
    with Client(served.address) as client:
        assert client.generate(LATE_PROMPT, max_tokens=6).token_ids == done.token_ids


def test_stream_and_unary_agree_sync_and_async(served):
    with Client(served.address, timeout=120) as client:
        done = client.generate(PROMPT, max_tokens=10)
        stream = client.stream(PROMPT, max_tokens=10)
        chunks = list(stream)
    assert len(done.token_ids) == 10 and done.replica_id
    assert tuple(t for c in chunks for t in c.token_ids) == done.token_ids == stream.completion.token_ids
    assert "".join(c.text for c in chunks) == done.text == stream.completion.text

    async def run_async():
        async with AsyncClient(served.address, timeout=120) as client:
            one = await client.generate(PROMPT, max_tokens=10)
            streamed = [c async for c in client.stream(PROMPT, max_tokens=10)]
            batch = await client.generate_batch([PROMPT, LATE_PROMPT, PROMPT], concurrency=2, max_tokens=10)
            return one, streamed, batch

    one, streamed, batch = asyncio.run(run_async())
    assert one.token_ids == done.token_ids
    assert "".join(c.text for c in streamed) == done.text
    assert [b.token_ids for b in batch][::2] == [done.token_ids, done.token_ids]


def _settled(served: Served) -> dict:
    """The dashboard's replica entry once nothing is running or waiting on it."""
    replicas = []

    def idle():
        replicas[:] = served.dashboard_status().get("replicas") or []
        return replicas[0] if replicas and replicas[0]["running"] == 0 and replicas[0]["waiting"] == 0 else None
    return wait_for(idle, 60, lambda: f"the replica idle: {replicas}", every=0.2)


def test_breaking_out_of_a_stream_aborts_it_on_the_replica(served):
    before = _settled(served)["generation_tokens_total"]
    budget = 900
    with Client(served.address, timeout=120) as client:
        for i, _ in enumerate(client.stream(PROMPT, max_tokens=budget, ignore_eos=True)):
            if i == 2:
                break
    # wait for a snapshot taken after the request ended (it counts our tokens, none running)
    after = wait_for(lambda: (total := _settled(served)["generation_tokens_total"]) - before >= 3 and total, 60,
                     "the stream's tokens in the dashboard", every=0.2)
    assert after - before < budget


def test_deadline_and_typed_errors_from_the_real_server(served):
    with Client(served.address) as client:
        with pytest.raises(DeadlineExceeded):
            client.generate(PROMPT, max_tokens=900, ignore_eos=True, timeout=0.05)
        with pytest.raises(NotFound):
            client.generate(PROMPT, model="no-such-model")
        with pytest.raises(InvalidRequest) as info:
            client.generate([1_000_000], max_tokens=2)
        assert info.value.message
        assert client.generate(PROMPT, max_tokens=2).usage.completion_tokens == 2


def test_cli_generate_streams_and_json_match_the_client(served):
    with Client(served.address) as client:
        done = client.generate(PROMPT, max_tokens=8)
    proc = ttdist("generate", PROMPT, "-n", "8", "--target", served.address)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == done.text + ("" if done.text.endswith("\n") else "\n")
    proc = ttdist("generate", PROMPT, "-n", "8", "--json", "--target", served.address)
    out = json.loads(proc.stdout)
    assert (out["text"], out["token_ids"], out["finish_reason"]) == (done.text, list(done.token_ids), "length")
    proc = ttdist("generate", PROMPT, "--model", "no-such-model", "--target", served.address)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_cli_status_shows_the_replica(served):
    proc = ttdist("status", "--target", served.address)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "replicas: 1 (1 ready)" in lines[0]
    row = lines[3].split()
    assert row[1:4] == ["ready", "1x2", "sim"]
    status = json.loads(ttdist("status", "--json", "--target", served.address).stdout)
    replica = status["replicas"][0]
    assert replica["mesh"] == "1x2" and 0 < replica["kv_pages_free"] <= replica["kv_pages_total"]


def test_reflection_lets_a_generic_client_call_generate_from_json(served):
    """What grpcurl does: discover the service by reflection, build the request from JSON."""
    import grpc
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(served.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "ttdist.v1.Generation" in set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName("ttdist.v1.Generation").methods_by_name["Generate"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(
            json.dumps({"text": PROMPT, "sampling": {"max_tokens": 4}, "stream": True}), request_cls())
        call = channel.unary_stream("/ttdist.v1.Generation/Generate", request_serializer=request_cls.SerializeToString,
                                    response_deserializer=response_cls.FromString)
        replies = [json_format.MessageToDict(r) for r in call(request, timeout=120)]
    with Client(served.address) as client:
        done = client.generate(PROMPT, max_tokens=4)
    assert [t for r in replies[:-1] for t in r["chunk"].get("tokenIds", [])] == list(done.token_ids)
    assert replies[-1]["complete"]["text"] == done.text


def test_sigterm_drains_streams_then_stops_everything(served):
    """Last in this module: it stops the server. SIGTERM: health NOT_SERVING, new requests
    UNAVAILABLE, the stream in flight finishes whole, then the process exits 0."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ttdist.client import Unavailable

    with Client(served.address, timeout=300) as client:
        stream = client.stream(PROMPT, max_tokens=900, ignore_eos=True)
        chunks = iter(stream)
        first = next(chunks)
        served.process.send_signal(signal.SIGTERM)
        with grpc.insecure_channel(served.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                     == health_pb2.HealthCheckResponse.NOT_SERVING, 60, "health NOT_SERVING", every=0.05)
        with Client(served.address, retry=RetryPolicy(max_attempts=1)) as late:
            with pytest.raises(Unavailable) as info:
                late.generate(PROMPT, max_tokens=2)
        assert "draining" in info.value.message
        rest = list(chunks)
    assert len(first.token_ids) + sum(len(c.token_ids) for c in rest) == 900
    assert stream.completion.finish_reason == "length" and stream.completion.usage.completion_tokens == 900
    assert served.process.wait(timeout=120) == 0, served.log_path.read_text()[-4000:]
    log = served.log_path.read_text()
    assert "ttdist: draining" in log and "ttdist: shutting down" in log
