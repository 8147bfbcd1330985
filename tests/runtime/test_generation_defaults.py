"""The model's generation_config.json defaults: read as vLLM's ``--generation-config auto`` reads
them (``vllm``: none), filled only into fields a request leaves unset, carried by the model card
to ListModels, and printed by ``ttdist status``."""

from __future__ import annotations

import json

import pytest

from ttdist.cli.status import format_table
from ttdist.client.types import ClusterStatus
from ttdist.runtime.config import ClusterConfig, ClusterConfigError
from ttdist.runtime.generation_defaults import (GenerationConfigError, GenerationDefaults, apply_generation_defaults,
                                                read_generation_defaults)
from ttdist.runtime.request_checks import ModelCard
from ttdist.v1 import generation_pb2 as pb


def _write(tmp_path, config: dict):
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    return tmp_path


def test_sampling_fields_are_read_and_others_ignored(tmp_path):
    path = _write(tmp_path, {"bos_token_id": 1, "temperature": 0.6, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1,
                             "max_new_tokens": 99, "do_sample": True})
    assert read_generation_defaults(path) == GenerationDefaults(0.6, 50, 0.9, 1.1)
    assert read_generation_defaults(path, "vllm") == GenerationDefaults()
    assert read_generation_defaults(tmp_path / "elsewhere") == GenerationDefaults()   # no file: none


def test_do_sample_false_is_greedy_and_bad_values_are_named(tmp_path):
    assert read_generation_defaults(_write(tmp_path, {"do_sample": False, "temperature": 0.7})).temperature == 0.0
    with pytest.raises(GenerationConfigError, match="top_p"):
        read_generation_defaults(_write(tmp_path, {"top_p": "high"}))
    with pytest.raises(GenerationConfigError, match="auto, vllm"):
        read_generation_defaults(tmp_path, "hf")
    with pytest.raises(ClusterConfigError, match="generation_config"):
        ClusterConfig(generation_config="hf").check()


def test_smollm2_gives_no_sampling_defaults():
    from ttdist.model.smollm2 import default_dir

    if not (default_dir() / "generation_config.json").is_file():
        pytest.skip("SmolLM2 is not materialized here")
    assert read_generation_defaults(default_dir()) == GenerationDefaults()


def test_only_unset_fields_take_the_defaults():
    defaults = GenerationDefaults(temperature=0.6, top_k=20, top_p=0.9, repetition_penalty=1.2)
    left_out = pb.SamplingParams(max_tokens=4)
    apply_generation_defaults(left_out, defaults)
    assert (left_out.temperature, left_out.top_k, left_out.top_p, left_out.repetition_penalty) == pytest.approx((0.6, 20, 0.9, 1.2))
    given = pb.SamplingParams(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    apply_generation_defaults(given, defaults)   # explicit values, zeros included, stay
    assert (given.temperature, given.top_k, given.top_p, given.repetition_penalty) == (0.0, 0, 1.0, 1.0)


def test_the_card_and_the_status_table_show_them():
    defaults = GenerationDefaults(temperature=0.6, repetition_penalty=1.1)
    info = ModelCard("m", 100, 64, generation_defaults=defaults).to_proto()
    assert GenerationDefaults.from_proto(info.generation_defaults).as_dict() == pytest.approx(defaults.as_dict())
    status = ClusterStatus.from_proto(pb.ClusterStatus(model="m", policy="round_robin", generation_defaults=defaults.to_proto()))
    assert status.generation_defaults == {"temperature": pytest.approx(0.6), "repetition_penalty": pytest.approx(1.1)}
    assert format_table(status).splitlines()[1] == "generation defaults: temperature=0.6 repetition_penalty=1.1"
    assert "generation defaults" not in format_table(ClusterStatus(model="m", policy="round_robin"))


@pytest.mark.slow
def test_serve_applies_the_checkpoints_defaults(tiny_checkpoint, tmp_path):
    import shutil
    import signal

    import openai

    from tests.support.generation import run, stub_for
    from tests.support.serving import serve_addresses, serve_cli
    from ttdist.client import Client

    checkpoint = tmp_path / "tiny-llama"
    shutil.copytree(tiny_checkpoint, checkpoint)
    _write(checkpoint, {"bos_token_id": 1, "do_sample": False, "repetition_penalty": 1.8})
    with serve_cli(checkpoint, tmp_path, "--mesh", "1x2", "--max-kv-pages", "32") as proc:
        address, http = serve_addresses(proc)
        model = openai.OpenAI(base_url=http, api_key="none", max_retries=0).models.retrieve(checkpoint.name)
        assert model.model_extra["generation_defaults"] == {"temperature": 0.0, "repetition_penalty": pytest.approx(1.8)}
        with Client(address) as client:
            assert client.cluster_status().generation_defaults == pytest.approx(model.model_extra["generation_defaults"])
            left_out = client.generate([5, 17, 17, 300, 5], max_tokens=8, ignore_eos=True).token_ids
            explicit = client.generate([5, 17, 17, 300, 5], max_tokens=8, ignore_eos=True, temperature=0,
                                       repetition_penalty=1.8).token_ids
            plain = client.generate([5, 17, 17, 300, 5], max_tokens=8, ignore_eos=True, repetition_penalty=1.0).token_ids
        assert left_out == explicit != plain
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
