"""The planner against tt-metal's published figures, and the physics it must respect."""

from __future__ import annotations

import pytest

from ttdist.mesh.precision import Precision
from ttdist.mesh.spec import parse_mesh
from ttdist.planner import PlanError, kv_plan, plan, resolve_model

# tt-metal models/README.md (batch 32, input 128): model, system, tokens/s/user, TTFT (ms)
PUBLISHED = [
    ("llama-3.1-70b", "tg", 72.5, 53),
    ("llama-3.1-70b", "t3k", 15.9, 159),
    ("llama-3.1-8b", "n150", 26.0, 104),
]


@pytest.mark.parametrize("model,system,tsu,ttft_ms", PUBLISHED)
def test_decode_speed_within_20_percent_of_published(model, system, tsu, ttft_ms):
    p = plan(model, system, precision="performance", batch=32, context=128, input_len=128)
    assert p.users == 32
    assert abs(p.tokens_per_s_per_user - tsu) / tsu <= 0.20, (p.tokens_per_s_per_user, tsu)


def test_the_galaxy_figure_needs_the_prefetcher():
    """Without overlapping the weight stream the Galaxy would be far slower than published."""
    serial = plan("llama-3.1-70b", "tg", prefetch=False)
    prefetched = plan("llama-3.1-70b", "tg", prefetch=True)
    assert serial.decode.total_s > 1.3 * prefetched.decode.total_s
    assert prefetched.decode.total_s == max(prefetched.decode.weights_s, prefetched.decode.total_s)


def test_more_context_means_fewer_users_and_slower_steps():
    short = plan("llama-3.1-8b", "n300", context=1024)
    long = plan("llama-3.1-8b", "n300", context=32768)
    assert long.memory.max_users < short.memory.max_users
    assert long.memory.kv_per_user == 32 * short.memory.kv_per_user
    assert long.decode.kv_bytes > short.decode.kv_bytes
    assert long.tokens_per_s_per_user < short.tokens_per_s_per_user


def test_replicas_scale_cluster_throughput():
    one = plan("llama-3.1-70b", "tg")
    four = plan("llama-3.1-70b", "4xtg")
    assert four.replicas == 4
    assert four.cluster_tokens_per_s == pytest.approx(4 * one.cluster_tokens_per_s)
    assert four.tokens_per_s_per_user == one.tokens_per_s_per_user


def test_users_are_capped_by_kv_pages():
    p = plan("llama-3.1-70b", "t3k", batch=32, context=131072)
    assert p.users == p.memory.max_users < 32
    assert p.memory.kv_pages // (131072 // 32) == p.memory.max_users
    budget = kv_plan("llama-3.1-70b", "t3k", context=131072)
    assert (budget.num_pages, budget.max_batch) == (p.memory.kv_pages, p.users)
    # a coordinator passes the objects it already holds
    config, spec = resolve_model("llama-3.1-70b")[1], parse_mesh("t3k")
    assert kv_plan(config, spec, precision=Precision.parse("performance"), context=131072) == budget


def test_weights_shrink_with_the_mesh_and_the_format():
    n300 = plan("llama-3.1-8b", "n300", precision="bfloat16").memory.weights
    t3k = plan("llama-3.1-8b", "t3k", precision="bfloat16").memory.weights
    t3k_perf = plan("llama-3.1-8b", "t3k", precision="performance").memory.weights
    assert t3k < n300 / 3.5
    assert t3k_perf < 0.6 * t3k


@pytest.mark.parametrize("kwargs,field", [
    (dict(model="llama-9"), "model"),
    (dict(system="tg9"), "system"),
    (dict(system="0xtg"), "system"),
    (dict(model="llama-3.1-70b", system="n150"), "system"),
    (dict(precision="fp3"), "precision"),
    (dict(batch=0), "batch"),
    (dict(context=-1), "context"),
    (dict(context=10**7), "context"),
])
def test_bad_input_names_the_field(kwargs, field):
    args = {"model": "llama-3.1-8b", "system": "t3k", **kwargs}
    with pytest.raises(PlanError) as err:
        plan(args.pop("model"), args.pop("system"), **args)
    assert err.value.field == field


def test_config_json_without_llama_fields(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    with pytest.raises(PlanError, match="missing vocab_size, intermediate_size") as err:
        plan(str(tmp_path), "n150")
    assert err.value.field == "model"
