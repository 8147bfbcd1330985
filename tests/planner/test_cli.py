"""``ttdist plan`` from the command line: a plan, a fleet for a load and an SLO, and bad input."""

from __future__ import annotations

import json

import pytest

from ttdist.cli import main
from ttdist.planner import PlanError
from ttdist.planner.fleet import load_file, parse_load, parse_slo

FLEET = ["plan", "llama-3.2-1b", "--system", "n150,n300", "--precision", "performance",
         "--load", "rate=30,input=256,output=32", "--slo", "ttft=300ms,tpot=30ms"]


def test_a_plan_as_json_carries_every_term(capsys):
    assert main(["plan", "llama-3.1-70b", "--system", "tg", "--batch", "1", "--context", "32768",
                 "--input-len", "32768", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decode_kernels"] == "llama3_70b_galaxy"
    for term in ("weights_s", "matmul_compute_s", "kv_cache_s", "ccl_transfer_s", "ccl_latency_s", "ops_s",
                 "dispatch_s", "total_s"):
        assert term in out["decode"] and term in out["prefill"]
    assert out["memory"]["prefill_chunk"] <= 32768 and out["memory"]["trace_region"] > 0


def test_a_fleet_is_ranked_by_chips_with_latency_percentiles(capsys):
    assert main([*FLEET, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    options = out["options"]
    assert options, out
    chips = [o["chips"] for o in options]
    assert chips == sorted(chips)
    best = options[0]
    lat = best["latency"]
    assert lat["ttft_p50_s"] <= lat["ttft_p90_s"] <= 0.300 and lat["tpot_p90_s"] <= 0.030
    assert best["saturation_rate"] >= 30
    assert best["plan"]["decode"]["total_s"] == best["decode_step_s"]


def test_a_fleet_as_text(capsys):
    assert main(FLEET) == 0
    text = capsys.readouterr().out
    assert "saturates at" in text and "req/s" in text


def test_a_load_file(tmp_path):
    path = tmp_path / "workload.json"
    path.write_text('{"rate": 20, "input": 1024, "output": 256}')
    load = load_file(str(path))
    assert (load.rate, load.input, load.output) == (20.0, 1024, 256)
    assert parse_slo("ttft=0.5s,tpot=50ms").ttft_s == 0.5


@pytest.mark.parametrize("argv,flag", [
    (["plan", "llama-9b"], "model:"),
    (["plan", "llama-3.1-8b", "--system", "tg9"], "--system:"),
    (["plan", "llama-3.1-8b", "--context", "200000"], "--context:"),
    (["plan", "llama-3.1-8b", "--input-len", "200000"], "--input-len:"),
    (["plan", "llama-3.1-8b", "--load", "rate=fast,input=1,output=1", "--slo", "ttft=1s"], "--load:"),
    (["plan", "llama-3.1-8b", "--load", "rate=2,input=128", "--slo", "ttft=1s"], "--load:"),
    (["plan", "llama-3.1-8b", "--load", "rate=2,input=128000,output=8000", "--slo", "ttft=1s"], "--load:"),
    (["plan", "llama-3.1-8b", "--load", "rate=2,input=128,output=8", "--slo", "ttft=soon"], "--slo:"),
    (["plan", "llama-3.1-8b", "--load", "rate=2,input=128,output=8"], "--slo:"),
    (["plan", "llama-3.1-8b", "--load-file", "/nonexistent.json", "--slo", "ttft=1s"], "--load-file:"),
    (["plan", "llama-3.1-8b", "--implementation", "vllm"], "--implementation:"),
    (["plan", "llama-3.1-8b", "--system", "t3k", "--implementation", "galaxy-demo"], "--implementation:"),
    (["plan", "llama-3.1-8b", "--sampling", "cpu"], "--sampling:"),
    (["plan", "llama-3.1-8b", "--precision", "fp3"], "--precision:"),
])
def test_bad_input_is_one_line_naming_the_field_and_exit_2(argv, flag, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err


@pytest.mark.parametrize("text", ["rate=0,input=1,output=1", "rate=1,input=1.5,output=1", "input=1,output=1",
                                  "rate=1,input=1,output=1,colour=red", "rate=inf,input=1,output=1"])
def test_loads_that_do_not_parse(text):
    with pytest.raises(PlanError) as err:
        parse_load(text)
    assert err.value.field == "load"


def test_host_sampling_and_the_generic_galaxy_path_are_in_the_breakdown(capsys):
    """Logits read back every step cost the host term; tt_transformers on a Galaxy is its own kernels."""
    base = ["plan", "llama-3.2-1b", "--system", "n150", "--batch", "32", "--json"]
    assert main(base) == 0
    device = json.loads(capsys.readouterr().out)
    assert main([*base, "--sampling", "host"]) == 0
    host = json.loads(capsys.readouterr().out)
    assert host["sampling"] == "host" and host["decode"]["host_s"] > device["decode"]["host_s"]
    assert host["decode"]["total_s"] > device["decode"]["total_s"]
    assert main(["plan", "llama-3.2-1b", "--system", "tg", "--batch", "1", "--implementation", "tt-transformers",
                 "--json"]) == 0
    generic = json.loads(capsys.readouterr().out)
    assert generic["decode_kernels"] == "tt_transformers_2d" and not generic["decode"]["prefetch"]
