"""``ttdist serve --backend ttnn --emulate``: the unchanged ttnn backend on emulated chips
(``ttdist.mesh.ttnn_emu``) behind the whole serving stack — coordinator, replica actor and its
engine process, router, gRPC and the OpenAI API — in this environment, which has no ttnn. Its
greedy tokens equal the simulator's on the same checkpoint at the same precision (ttnn's default,
``accuracy``); ``--emulate`` without ``--backend ttnn`` and the spec's ``emulate:`` are checked."""

from __future__ import annotations

import signal

import pytest

from tests.support.generation import greedy, run, stub_for
from tests.support.serving import serve_addresses, serve_cli
from ttdist.cli import main
from ttdist.runtime.cluster_file import parse_spec
from ttdist.runtime.config import DEFAULT_PRECISION, ClusterConfig, ReplicaGroup
from ttdist.runtime.preflight import preflight
from ttdist.v1 import generation_pb2 as pb

PROMPTS = ([1, 2, 3], list(range(100, 140)))   # a short prompt and one of more than a page
TOKENS = 6


def _simulated(checkpoint, cache, precision: str) -> list[list[int]]:
    """Greedy tokens of the in-process simulator on the same mesh (n300) at ``precision``."""
    from ttdist.engine.config import EngineConfig
    from ttdist.engine.core import EngineCore
    from ttdist.engine.request import GenerationRequest, SamplingParams
    from ttdist.model.runner import MeshModelRunner

    runner = MeshModelRunner.from_checkpoint(checkpoint, mesh="n300", backend="sim", dtype=precision, page_size=32,
                                             num_pages=8, max_batch=4, cache_dir=cache)
    core = EngineCore(runner, None, EngineConfig(max_batch=4))
    for i, ids in enumerate(PROMPTS):
        core.add_request(GenerationRequest(f"r{i}", prompt_token_ids=ids,
                                           sampling=SamplingParams(max_tokens=TOKENS, ignore_eos=True)))
    done = {}
    while core.has_work():
        done.update({out.request_id: out.output_ids for out in core.step() if out.finished})
    return [done[f"r{i}"] for i in range(len(PROMPTS))]


@pytest.mark.slow
def test_emulated_ttnn_serves_the_simulators_greedy_tokens(tiny_checkpoint, tmp_path):
    import openai
    from tokenizers import Tokenizer

    expected = _simulated(tiny_checkpoint, tmp_path / "sim-cache", DEFAULT_PRECISION["ttnn"])
    with serve_cli(tiny_checkpoint, tmp_path, "--backend", "ttnn", "--emulate", "--mesh", "n300",
                   "--max-kv-pages", "16") as proc:
        address, http = serve_addresses(proc)
        channel, stub = stub_for(address)
        with channel:
            served = [run(stub, greedy(ids, TOKENS))[0] for ids in PROMPTS]
            status = stub.GetClusterStatus(pb.ClusterStatusRequest())
        api = openai.OpenAI(base_url=http, api_key="none", max_retries=0)
        done = api.completions.create(model=tiny_checkpoint.name, prompt=PROMPTS[1], max_tokens=TOKENS, temperature=0,
                                      extra_body={"ignore_eos": True})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    assert served == expected
    assert done.usage.completion_tokens == TOKENS
    assert [r.backend for r in status.replicas] == ["ttnn (emulated)"]
    assert status.replicas[0].mesh == "1x2"
    text = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json")).decode(expected[1])
    assert done.choices[0].text == text


@pytest.mark.parametrize("flags", [["--emulate"], ["--backend", "sim", "--emulate"]])
def test_emulate_without_the_ttnn_backend_is_one_line(flags, capsys):
    code = main(["serve", "--dashboard-port", "-1", *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "--emulate" in err and "needs backend ttnn" in err, err


def test_a_spec_with_emulated_ttnn_passes_preflight_without_ttnn(tiny_checkpoint):
    spec = parse_spec({"model": str(tiny_checkpoint), "replicas": [
        {"count": 1, "mesh": "t3k", "backend": "ttnn", "emulate": True},
        {"count": 1, "mesh": "n300"}]})
    config = spec.config
    assert [g.label for g in config.groups] == ["ttnn (emulated)", "sim"]
    assert [config.precision_of(g.backend) for g in config.groups] == ["accuracy", "float32"]
    preflight(config, local=True)    # neither the ttnn package nor chips are asked for


def test_precision_follows_the_backend_unless_given():
    auto = ClusterConfig(groups=(ReplicaGroup(mesh="n300", backend="ttnn", emulate=True), ReplicaGroup(mesh="n300")))
    assert auto.precision_of("sim") == "float32" and auto.precision_of("ttnn") == "accuracy"
    assert auto.convert_precision("n300") == "float32"     # one entry serves both groups: float32 storage
    given = ClusterConfig(dtype="bfloat8_b")
    assert given.precision_of("sim") == given.precision_of("ttnn") == "bfloat8_b"
