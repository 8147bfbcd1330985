"""The blocking Client against a real gRPC server over the scripted backend."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest
from tests.support.scripted_generation import MODEL_ID, Script, ScriptedServer, expected_ids, expected_text

from ttdist.client import (
    Cancelled,
    Client,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    Overloaded,
    RetryPolicy,
    ServerError,
    Unauthenticated,
    Unavailable,
)

FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.05)


def test_generate_returns_the_whole_completion(scripted):
    server = scripted()
    with Client(server.address) as client:
        done = client.generate("hello", max_tokens=5, request_id="req-1")
    assert done.request_id == "req-1"
    assert done.token_ids == tuple(expected_ids(5, 5))
    assert done.text == expected_text(5, 5)
    assert done.finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (5, 5)
    assert done.replica_id == "r0"
    assert done.timings.ttft_s == pytest.approx(0.002)
    assert server.seen.requests[0].stream is False


def test_sampling_parameters_reach_the_server_exactly(scripted):
    server = scripted()
    with Client(server.address) as client:
        client.generate([1, 2, 3], max_tokens=4, temperature=0.7, top_k=40, top_p=0.9, seed=11,
                        stop=["\n", "END"], stop_token_ids=[2], ignore_eos=True, model=MODEL_ID)
    req = server.seen.requests[0]
    assert list(req.token_ids.ids) == [1, 2, 3]
    assert req.model == MODEL_ID
    s = req.sampling
    assert (s.max_tokens, s.top_k, s.seed, list(s.stop), list(s.stop_token_ids), s.ignore_eos) == (
        4, 40, 11, ["\n", "END"], [2], True)
    assert s.temperature == pytest.approx(0.7)
    assert s.top_p == pytest.approx(0.9)


def test_defaults_are_greedy_and_unseeded(scripted):
    server = scripted()
    with Client(server.address) as client:
        client.generate(token_ids=[5, 6], max_tokens=None, seed=None, stop=None, temperature=None)
    s = server.seen.requests[0].sampling
    assert (s.temperature, s.top_k, s.max_tokens, s.HasField("seed")) == (0.0, 0, 0, False)


def test_stream_yields_each_token_then_the_completion(scripted):
    server = scripted()
    with Client(server.address) as client:
        stream = client.stream("abc", max_tokens=4)
        assert stream.completion is None
        chunks = list(stream)
    assert [c.token_ids[0] for c in chunks] == expected_ids(3, 4)
    assert "".join(c.text for c in chunks) == expected_text(3, 4)
    assert stream.completion.text == expected_text(3, 4)
    assert stream.completion.token_ids == tuple(expected_ids(3, 4))
    assert server.seen.requests[0].stream is True
    assert server.seen.cancelled == set()


def test_breaking_out_of_a_stream_cancels_it_on_the_server(scripted):
    server = scripted(token_delay_s=0.05)
    with Client(server.address) as client:
        for chunk in client.stream("hello", max_tokens=200, request_id="early"):
            break
        assert server.wait_for(lambda seen: "early" in seen.cancelled)
    assert "early" not in server.seen.completed


def test_leaving_the_with_block_cancels_and_final_reports_it(scripted):
    server = scripted(token_delay_s=0.05)
    with Client(server.address) as client:
        with client.stream("hello", max_tokens=200, request_id="ctx") as stream:
            next(stream)
        assert server.wait_for(lambda seen: "ctx" in seen.cancelled)
        with pytest.raises(Cancelled):
            stream.final()


def test_abort_by_id_ends_the_stream_with_abort(scripted):
    server = scripted(token_delay_s=0.02)
    with Client(server.address) as client:
        stream = client.stream("hello", max_tokens=500, request_id="to-abort")
        next(stream)
        assert client.abort("to-abort") is True
        done = stream.final()
        assert done.finish_reason == "abort"
        assert client.abort("to-abort") is False
    assert server.seen.abort_calls == ["to-abort", "to-abort"]


def test_retries_unavailable_before_the_first_token_with_the_same_request_id(scripted):
    server = scripted(unavailable_first=3)
    with Client(server.address, retry=FAST_RETRY) as client:
        done = client.generate("hello", max_tokens=2, request_id="retry-me")
    assert done.text == expected_text(5, 2)
    assert [r.request_id for r in server.seen.requests] == ["retry-me"] * 4


def test_gives_up_after_max_attempts(scripted):
    server = scripted(unavailable_first=100)
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    with Client(server.address, retry=retry) as client, pytest.raises(Unavailable) as info:
        client.generate("hello")
    assert "no replica is ready" in info.value.message
    assert "3 attempts" in info.value.message
    assert len(server.seen.requests) == 3


def test_no_retry_once_tokens_have_arrived(scripted):
    server = scripted(unavailable_after_tokens=2)
    with Client(server.address, retry=FAST_RETRY) as client:
        stream = client.stream("hello", max_tokens=5)
        got = [next(stream).token_ids[0], next(stream).token_ids[0]]
        with pytest.raises(Unavailable, match="replica lost"):
            next(stream)
    assert got == expected_ids(5, 2)
    assert len(server.seen.requests) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_retry_reaches_a_router_that_comes_up_late():
    port = _free_port()
    retry = RetryPolicy(max_attempts=60, initial_backoff_s=0.05, max_backoff_s=0.2)
    result: dict = {}

    def call():
        with Client(f"127.0.0.1:{port}", retry=retry) as client:
            try:
                result["done"] = client.generate("late", max_tokens=3)
            except Exception as e:  # reported by the assertion below
                result["error"] = e

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)  # the call is already retrying against a closed port
    server = ScriptedServer(Script(), port=port).start()
    try:
        caller.join(30)
    finally:
        server.stop()
    assert "error" not in result, result.get("error")
    assert result["done"].text == expected_text(4, 3)


def test_deadline_raises_and_the_server_sees_the_cancellation(scripted):
    server = scripted(token_delay_s=0.2)
    with Client(server.address) as client, pytest.raises(DeadlineExceeded, match=r"deadline of 0\.5 s exceeded"):
        client.generate("hello", max_tokens=50, request_id="slow", timeout=0.5)
    assert server.wait_for(lambda seen: "slow" in seen.cancelled)


def test_client_default_timeout_applies_and_none_disables_it(scripted):
    server = scripted(token_delay_s=0.1)
    with Client(server.address, timeout=0.2) as client:
        with pytest.raises(DeadlineExceeded):
            client.generate("hello", max_tokens=20)
        assert client.generate("hello", max_tokens=3, timeout=None).token_ids == tuple(expected_ids(5, 3))


@pytest.mark.parametrize("code, exc", [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
    (grpc.StatusCode.NOT_FOUND, NotFound),
    (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    (grpc.StatusCode.INTERNAL, ServerError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
])
def test_each_status_becomes_its_typed_exception_with_the_server_message(scripted, code, exc):
    server = scripted(error=(code, f"scripted {code.name} message"))
    with Client(server.address, retry=FAST_RETRY) as client, pytest.raises(exc) as info:
        client.generate("hello", request_id="typed")
    assert info.value.message == f"scripted {code.name} message"
    assert info.value.code == code
    assert info.value.request_id == "typed"
    assert len(server.seen.requests) == 1


def test_unknown_model_is_not_found(scripted):
    server = scripted()
    with Client(server.address) as client, pytest.raises(NotFound, match="unknown model 'nope'"):
        client.generate("hello", model="nope")


def test_bearer_token_is_sent_as_metadata(scripted):
    server = scripted(required_token="s3cret")
    with Client(server.address, token="s3cret") as client:
        client.generate("hello", max_tokens=1)
    assert server.seen.metadata[0]["authorization"] == "Bearer s3cret"
    with Client(server.address, token="wrong") as client, pytest.raises(Unauthenticated, match="bearer token"):
        client.generate("hello", max_tokens=1)


@pytest.mark.parametrize("kwargs, field", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 2.5}, "top_k"),
    ({"seed": -3}, "seed"),
    ({"stop": [""]}, "stop"),
    ({"stop_token_ids": [-1]}, "stop_token_ids[0]"),
    ({"max_token": 5}, "max_token"),
    ({"timeout": 0}, "timeout"),
    ({"token_ids": [1]}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"prompt": [1, "2"]}, "prompt[1]"),
    ({"model": 3}, "model"),
])
def test_bad_arguments_raise_invalid_request_naming_the_field(scripted, kwargs, field):
    server = scripted()
    with Client(server.address) as client, pytest.raises(InvalidRequest) as info:
        client.generate(**({"prompt": "x"} | kwargs))
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert server.seen.requests == []


def test_models_status_and_health(scripted):
    server = scripted()
    with Client(server.address) as client:
        assert [(m.id, m.max_context, m.vocab_size) for m in client.models()] == [(MODEL_ID, 256, 108)]
        status = client.cluster_status()
        assert (status.model, status.policy) == (MODEL_ID, "least_load")
        assert [(r.replica_id, r.state, r.mesh, r.kv_pages_free, r.waiting) for r in status.replicas] == [
            ("r0", "ready", "1x2", 60, 0), ("r1", "unhealthy", "8x4", 1800, 3)]
        # r0 comes from a server that leaves the groups unset (as an older one does): one group
        assert [(r.kv_user_groups, r.kv_pages_free_per_group) for r in status.replicas] == [
            (1, ()), (4, (512, 400, 512, 376))]
        assert client.health() == "SERVING"
        client.wait_ready(timeout=5)


def test_wait_ready_times_out_while_not_serving(scripted):
    server = scripted(health="NOT_SERVING")
    with Client(server.address) as client, pytest.raises(DeadlineExceeded, match="NOT_SERVING"):
        client.wait_ready(timeout=0.3)


def test_unary_calls_fail_with_unavailable_when_nothing_listens():
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)
    with Client(f"127.0.0.1:{_free_port()}", retry=retry) as client, pytest.raises(Unavailable):
        client.models()


def test_batch_keeps_order_and_respects_the_concurrency_limit(scripted):
    server = scripted(hold_until_active=3, token_delay_s=0.01)
    prompts = ["a" * n for n in range(1, 11)]
    with Client(server.address) as client:
        done = client.generate_batch(prompts, concurrency=3, max_tokens=3)
    assert [d.text for d in done] == [expected_text(n, 3) for n in range(1, 11)]
    assert server.seen.peak_active == 3
    assert len(server.seen.completed) == 10


def test_batch_returns_or_raises_errors(scripted):
    server = scripted(error=(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"))
    with Client(server.address) as client:
        out = client.generate_batch(["a", "b"], concurrency=2, return_exceptions=True)
        assert [type(e) for e in out] == [Overloaded, Overloaded]
        with pytest.raises(Overloaded, match="queue full"):
            client.generate_batch(["a", "b"], concurrency=1)
        with pytest.raises(InvalidRequest) as info:
            client.generate_batch(["a"], concurrency=0)
        assert info.value.field == "concurrency"
