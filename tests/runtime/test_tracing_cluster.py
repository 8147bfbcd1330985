"""Traces across processes: a real Ray cluster (router and replicas are Ray actors, each
replica's engine steps in a process of its own) exports OTLP spans to a receiver started here.
A request through the OpenAI HTTP API with a ``traceparent`` header and one through gRPC with
``traceparent`` metadata each make one trace: the router's spans (ttdist-router) and the
replica's and engine's (ttdist-replica) share the caller's trace id, parent to child.
"""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest

from tests.support.cluster import running_cluster
from tests.support.generation import greedy
from tests.support.otlp import OtlpReceiver
from ttdist.runtime.api_config import ApiConfig
from ttdist.runtime.config import ClusterConfig, ReplicaGroup
from ttdist.tracing import TracingConfig
from ttdist.v1 import generation_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

HTTP_TRACE, GRPC_TRACE = "5b8efff798038103d269b633813fc60c", "6e0c63257de34c92bf9efcd03927272e"
CALLER = "eee19b7ec3c1b174"


def check_tree(spans, trace_id: str) -> dict:
    mine = [s for s in spans if s.trace_id == trace_id]
    by_name = {}
    for s in mine:
        by_name.setdefault(s.name, []).append(s)
    (root,) = by_name["request"]
    (segment,) = by_name["segment"]
    (replica,) = by_name["replica.generate"]
    assert root.parent_id == CALLER and root.service == "ttdist-router"
    assert segment.parent_id == root.span_id and segment.service == "ttdist-router"
    assert replica.parent_id == segment.span_id and replica.service == "ttdist-replica"
    assert replica.attributes["ttdist.replica_id"] == segment.attributes["ttdist.replica_id"]
    engine = [s for s in mine if s.name.startswith("engine.")]
    assert {s.name for s in engine} == {"engine.queue", "engine.prefill", "engine.decode"}
    assert all(s.parent_id == replica.span_id and s.service == "ttdist-replica" for s in engine)
    assert by_name["route"][0].attributes["ttdist.policy"] == "cache_aware"
    return by_name


def test_http_and_grpc_requests_each_make_one_trace_across_processes(tiny_checkpoint, tmp_path):
    receiver = OtlpReceiver().start()
    try:
        config = ClusterConfig(
            model=str(tiny_checkpoint), groups=(ReplicaGroup(count=1, mesh="1x1"),), port=0, dashboard_port=None,
            max_kv_pages=64, weights_cache=str(tmp_path / "weights"), policy="cache_aware",
            api=ApiConfig(http_port=0),
            tracing=TracingConfig(otlp_traces_endpoint=receiver.endpoint, export_interval_s=0.2))
        with running_cluster(config, serving_timeout_s=120) as deployment:
            body = json.dumps({"model": "tiny-llama", "prompt": [101, 102, 103, 104, 105], "max_tokens": 5,
                               "temperature": 0}).encode()
            http = urllib.request.Request(f"{deployment.http_url}/v1/completions", data=body, headers={
                "Content-Type": "application/json", "traceparent": f"00-{HTTP_TRACE}-{CALLER}-01",
                "tracestate": "vendor=1"})
            with urllib.request.urlopen(http, timeout=120) as answer:
                assert json.load(answer)["usage"]["completion_tokens"] == 5
            with grpc.insecure_channel(deployment.address) as channel:
                stub = pb_grpc.GenerationStub(channel)
                last = list(stub.Generate(greedy([201, 202, 203], 4), timeout=120,
                                          metadata=(("traceparent", f"00-{GRPC_TRACE}-{CALLER}-01"),)))[-1]
                assert len(last.complete.output_ids) == 4
            spans = receiver.wait_for(lambda s: {GRPC_TRACE, HTTP_TRACE} <= {x.trace_id for x in s
                                                                           if x.name == "engine.decode"}
                                      and sum(x.name == "request" for x in s) >= 2, 60, "both traces")
    finally:
        receiver.stop()
    http_spans = check_tree(spans, HTTP_TRACE)
    assert http_spans["request"][0].attributes["ttdist.completion_tokens"] == 5
    grpc_spans = check_tree(spans, GRPC_TRACE)
    assert grpc_spans["engine.decode"][0].attributes["ttdist.output_tokens"] == 4
