"""Two models served at once by one real Ray cluster: tiny random Llamas of different seeds, one on a
1x2 mesh (one replica, cache_aware), the other on 1x1 meshes (two replicas, its own chat template).

Each request is answered by its own model's replicas with that model's greedy reference (the
two references differ, so a request on the wrong model fails), through gRPC, the Python client
and the official ``openai`` client, one at a time and mixed; an unknown model is NOT_FOUND / 404
naming both; ListModels, /v1/models, GetClusterStatus, ``ttdist status`` and every Prometheus
series show each model.
"""

from __future__ import annotations

import json
from importlib import resources
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import jsonschema
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import running_cluster
from tests.support.generation import greedy, run, stub_for
from tests.support.grafana import check_queries, dashboard_queries, exported_labels
from tests.support.waiting import wait_for
from ttdist.cli.status import format_table
from ttdist.client import Client
from ttdist.runtime.api_config import ApiConfig
from ttdist.runtime.autoscale.config import AutoscaleConfig
from ttdist.runtime.config import ClusterConfig, ModelConfig, ReplicaGroup
from ttdist.v1 import generation_pb2 as pb

pytestmark = pytest.mark.slow

PROMPTS = [[200 + 11 * i + j for j in range(4 + i)] for i in range(4)]
MAX_TOKENS = 6
TEMPLATE = "{% for m in messages %}<<{{ m.role }}>> {{ m.content }}\n{% endfor %}<<assistant>>"
POOLS = {"alpha": {"replica-0"}, "beta": {"replica-1", "replica-2"}}
# alpha's pool is autoscaled, beta's a fixed count; a target no test load reaches keeps alpha at one replica
ALPHA_AUTOSCALE = AutoscaleConfig(min_replicas=1, max_replicas=2, target=1000, upscale_delay_s=600)


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoints):
    return {"alpha": tiny_checkpoints(seed=3), "beta": tiny_checkpoints(seed=11)}


@pytest.fixture(scope="module")
def served(checkpoints, tmp_path_factory):
    template = tmp_path_factory.mktemp("template") / "beta.jinja"
    template.write_text(TEMPLATE)
    config = ClusterConfig(
        models=(
            ModelConfig(name="alpha", model=str(checkpoints["alpha"]), groups=(ReplicaGroup(count=1, mesh="1x2"),),
                        policy="cache_aware", autoscale=ALPHA_AUTOSCALE),
            ModelConfig(name="beta", model=str(checkpoints["beta"]), groups=(ReplicaGroup(count=2, mesh="1x1"),),
                        chat_template=str(template)),
        ),
        port=0, dashboard_port=0, max_kv_pages=64, weights_cache=str(tmp_path_factory.mktemp("weights")),
        api=ApiConfig(http_port=0),
    )
    with running_cluster(config) as deployment:
        channel, stub = stub_for(deployment.address)
        wait_for(lambda: sum(r.state == "ready" for r in stub.GetClusterStatus(pb.ClusterStatusRequest()).replicas) == 3,
                 120, "three replicas ready", every=0.2)
        yield deployment, stub
        channel.close()


@pytest.fixture(scope="module")
def references(checkpoints):
    """Each model's greedy continuation of every prompt (transformers)."""
    import torch
    from transformers import LlamaForCausalLM

    out = {}
    for name, path in checkpoints.items():
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            out[name] = [model.generate(torch.tensor([p]), max_new_tokens=MAX_TOKENS, do_sample=False,
                                        eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in PROMPTS]
    assert out["alpha"] != out["beta"], "the two models must answer differently for this test to mean anything"
    return out


def _openai(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0].http_url + "/v1", api_key="none", max_retries=0)


def test_each_request_is_answered_by_its_own_models_replicas(served, references):
    _, stub = served
    for name in ("alpha", "beta"):
        seen = set()
        for prompt, want in zip(PROMPTS, references[name]):
            ids, complete = run(stub, greedy(prompt, MAX_TOKENS, model=name))
            assert ids == want and list(complete.output_ids) == want, (name, prompt)
            assert complete.replica_id in POOLS[name]
            seen.add(complete.replica_id)
        assert seen == POOLS[name]   # beta's two replicas both served (round robin within its pool)
    # no model named: the first (default) model
    ids, _ = run(stub, greedy(PROMPTS[0], MAX_TOKENS))
    assert ids == references["alpha"][0]


def test_mixed_traffic_through_grpc_the_client_and_openai(served, references):
    deployment, stub = served
    client, api = Client(deployment.address), _openai(served)

    def through_grpc(name, k):
        return run(stub, greedy(PROMPTS[k], MAX_TOKENS, model=name))[0]

    def through_client(name, k):
        return list(client.generate(PROMPTS[k], model=name, max_tokens=MAX_TOKENS, ignore_eos=True,
                                    temperature=0).token_ids)

    texts = {(name, k): run(stub, greedy(PROMPTS[k], MAX_TOKENS, model=name))[1].text
             for name in ("alpha", "beta") for k in range(len(PROMPTS))}   # each checked above to be its reference

    def through_openai(name, k):   # OpenAI gives text: the text of that model's reference ids
        done = api.completions.create(model=name, prompt=PROMPTS[k], max_tokens=MAX_TOKENS, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert done.model == name
        return references[name][k] if done.choices[0].text == texts[(name, k)] else ("text", done.choices[0].text)

    jobs = [(way, name, k) for k in range(len(PROMPTS)) for name in ("alpha", "beta")
            for way in (through_grpc, through_client, through_openai)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: job[0](job[1], job[2]), jobs))
    client.close()
    for (way, name, k), ids in zip(jobs, answers):
        assert ids == references[name][k], (way.__name__, name, k)


def test_unknown_model_names_the_served_ones(served):
    _, stub = served
    with pytest.raises(grpc.RpcError) as info:
        run(stub, greedy(PROMPTS[0], 2, model="gamma"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'gamma'" in info.value.details() and "'alpha'" in info.value.details() and "'beta'" in info.value.details()
    with pytest.raises(openai.NotFoundError) as http:
        _openai(served).completions.create(model="gamma", prompt="hi", max_tokens=2)
    assert http.value.status_code == 404 and "'alpha', 'beta'" in http.value.message


def test_models_listed_on_every_surface(served):
    deployment, stub = served
    assert [m.id for m in stub.ListModels(pb.ListModelsRequest()).models] == ["alpha", "beta"]
    api = _openai(served)
    assert [m.id for m in api.models.list().data] == ["alpha", "beta"]
    assert api.models.retrieve("beta").id == "beta"
    status = Client(deployment.address).cluster_status()
    assert [m.id for m in status.models] == ["alpha", "beta"] and status.model == "alpha"
    assert {r.replica_id: r.model for r in status.replicas} == {"replica-0": "alpha", "replica-1": "beta",
                                                               "replica-2": "beta"}
    assert {r.model: r.mesh for r in status.replicas} == {"alpha": "1x2", "beta": "1x1"}
    assert [(a.model, a.max_replicas, a.replicas) for a in status.autoscale] == [("alpha", 2, 1)]
    assert status.autoscale_of("beta") is None
    table = format_table(status)
    assert "alpha: 1 replica(s)" in table and "beta: 2 replica(s)" in table
    assert "autoscale alpha: 1 replicas (min 1, max 2), target ongoing_requests 1000; 0 up, 0 down" in table
    header = next(line for line in table.splitlines() if line.startswith("REPLICA"))
    assert header.split()[:3] == ["REPLICA", "MODEL", "STATE"]
    assert [line.split()[1] for line in table.splitlines() if line.startswith("replica-")] == ["alpha", "beta", "beta"]
    snapshot = deployment.snapshot()
    assert [(m.name, m.policy) for m in snapshot.models] == [("alpha", "cache_aware"), ("beta", "round_robin")]
    # weights converted once per (model, mesh): alpha's 1x2 entry, beta's 1x1 one (its two replicas share it)
    converted = sorted(e.message.split(":")[0] for e in snapshot.events if e.kind == "weights_ready")
    assert converted == ["alpha on mesh 1x2", "beta on mesh 1x1"]
    with urllib.request.urlopen(f"{deployment.dashboard_url}/api/status", timeout=10) as resp:
        body = json.load(resp)
    assert {m["name"]: m["summary"]["replicas_total"] for m in body["models"]} == {"alpha": 1, "beta": 2}
    assert [(m["name"], (m["autoscale"] or {}).get("max_replicas")) for m in body["models"]] == [("alpha", 2), ("beta", None)]
    assert [r["model"] for r in body["replicas"]] == ["alpha", "beta", "beta"]
    schema = json.loads((resources.files("ttdist.dashboard") / "static" / "status.schema.json").read_text())
    jsonschema.validate(body, schema)


def test_each_model_renders_chats_with_its_own_template(served):
    deployment, _ = served
    chat = [{"role": "user", "content": "Hello there"}]

    def tokenize(model):
        req = urllib.request.Request(f"{deployment.http_url}/tokenize", method="POST",
                                     data=json.dumps({"model": model, "messages": chat}).encode())
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)["tokens"]

    from ttdist.engine.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_dir_if_present(str(deployment_dir(deployment, "beta")))
    assert tokenize("beta") == tokenizer.encode("<<user>> Hello there\n<<assistant>>", add_special_tokens=False)
    with pytest.raises(urllib.error.HTTPError) as refused:   # alpha's checkpoint has no template: chats refused
        tokenize("alpha")
    assert refused.value.code == 400 and "chat template" in json.load(refused.value)["error"]["message"]
    done = _openai(served).chat.completions.create(model="beta", messages=chat, max_tokens=2, temperature=0)
    assert done.usage.prompt_tokens == len(tokenize("beta"))


def deployment_dir(deployment, model: str) -> str:
    import ray

    return ray.get(deployment.coordinator.model_dir_path.remote(model), timeout=30)


def test_every_metric_carries_its_models_name(served):
    deployment, stub = served
    for name in ("alpha", "beta"):
        run(stub, greedy(PROMPTS[1], 3, model=name))

    def text():
        with urllib.request.urlopen(f"{deployment.dashboard_url}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def scrape():
        return [s for f in text_string_to_metric_families(text()) for s in f.samples]

    def both_counted():
        samples = scrape()
        done = {s.labels["model_name"]: s.value for s in samples if s.name == "ttdist:request_success_total"
                and s.value > 0}
        return samples if {"alpha", "beta"} <= set(done) else None

    samples = wait_for(both_counted, 30, "finished requests of both models in /metrics", every=0.2)
    assert all("model_name" in s.labels for s in samples)
    for s in samples:
        if "replica" in s.labels:
            assert s.labels["replica"] in POOLS[s.labels["model_name"]], s
    replicas = {s.labels["model_name"]: s.value for s in samples if s.name == "ttdist:num_replicas"}
    assert replicas == {"alpha": 1, "beta": 2}
    scale = {(s.labels["model_name"], s.labels["direction"]) for s in samples if s.name == "ttdist:scale_events_total"}
    assert scale == {("alpha", "up"), ("alpha", "down")}   # only the autoscaled model has them
    # the Grafana dashboard reads only what this live cluster exports, labels included
    check_queries(dashboard_queries(), exported_labels(text()))
    events = {(s.labels["model_name"], s.labels["kind"]) for s in samples if s.name == "ttdist:cluster_events_total"}
    assert {("alpha", "replica_started"), ("beta", "replica_started")} <= events
