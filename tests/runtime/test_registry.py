"""The health state machine and the cluster spec files, without Ray."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.registry import BEAT, registry
from ttdist.client import ReplicaStatus
from ttdist.runtime.config import ClusterConfigError, HealthConfig
from ttdist.runtime.registry import Heartbeat, ReplicaRecord, Registry
from ttdist.runtime.cluster_file import load_spec, parse_spec
from ttdist.v1 import generation_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def test_starting_ready_unhealthy_ready_unhealthy_failed():
    reg = registry()
    r = reg.replicas["r0"]
    assert r.state == "starting"
    reg.heartbeat("r0", BEAT, 0.5)            # ignored while starting
    assert r.stats is None
    reg.started("r0", 1.0, pid=11, node_id="n", address="a:1", kv_pages_total=12)
    assert r.state == "ready"
    reg.heartbeat("r0", BEAT, 2.0)
    reg.tick(3.9)
    assert r.state == "ready"
    reg.tick(4.1)
    assert r.state == "unhealthy"
    reg.heartbeat("r0", BEAT, 5.0)
    assert r.state == "ready"
    reg.tick(7.5)
    assert r.state == "unhealthy"
    reg.tick(12.0)
    assert r.state == "unhealthy"
    reg.tick(12.6)
    assert r.state == "failed"
    assert [e.kind for e in reg.events] == [
        "replica_started", "replica_unhealthy", "replica_recovered", "replica_unhealthy", "replica_failed",
    ]


def test_dead_process_fails_at_once_and_restart_counts():
    reg = registry()
    reg.started("r0", 1.0, pid=11, node_id="n", address="a:1", kv_pages_total=12)
    reg.failed("r0", 1.5, "process gone")
    assert reg.replicas["r0"].state == "failed"
    reg.heartbeat("r0", BEAT, 1.6)            # a late heartbeat does not revive it
    assert reg.replicas["r0"].state == "failed"
    reg.restarting("r0", 2.0)
    r = reg.replicas["r0"]
    assert (r.state, r.restarts, r.pid, r.address) == ("starting", 1, 0, "")
    assert reg.events[-1].kind == "replica_restarting" and reg.events[-1].message == "restart 1 after 0.5 s failed"
    reg.started("r0", 3.0, pid=12, node_id="n", address="a:2", kv_pages_total=12)
    assert reg.events[-1].kind == "replica_restarted" and r.state == "ready"


def test_start_timeout_fails():
    reg = registry()
    reg.tick(29.0)
    assert reg.replicas["r0"].state == "starting"
    reg.tick(31.0)
    assert reg.replicas["r0"].state == "failed"


def test_entries_carry_heartbeat_figures():
    reg = registry()
    reg.replicas["r0"].kv_pages_budget = 999
    reg.started("r0", 1.0, pid=11, node_id="n", address="a:1", kv_pages_total=12)
    reg.heartbeat("r0", Heartbeat(2, 3, 7, 12, 0.5, 9.0, 1, 1, prefix_hashes=frozenset({5})), 1.2)
    (e,) = reg.entries()
    assert (e.running, e.waiting, e.kv_pages_free, e.kv_pages_total, e.kv_pages_budget) == (2, 3, 7, 12, 999)
    assert e.prefix_hashes == {5} and e.to_proto().kv_pages_budget == 999
    assert (e.kv_user_groups, e.kv_pages_free_per_group) == (1, ())     # one group: no split shown
    assert (e.to_proto().kv_user_groups, list(e.to_proto().kv_pages_free_per_group)) == (1, [])


def test_entries_carry_the_user_groups_to_the_proto():
    reg = registry()
    reg.started("r0", 1.0, pid=11, node_id="n", address="a:1", kv_pages_total=512)
    beat = Heartbeat(2, 0, 466, 512, 0.0, 9.0, 1, 1, kv_user_groups=4, kv_pages_free_per_group=(120, 128, 128, 90))
    reg.heartbeat("r0", beat, 1.2)
    (e,) = reg.entries()
    assert (e.kv_pages_free, e.kv_user_groups, e.kv_pages_free_per_group) == (466, 4, (120, 128, 128, 90))
    msg = pb.ReplicaStatus.FromString(e.to_proto().SerializeToString())
    assert (msg.kv_pages_free, msg.kv_user_groups, list(msg.kv_pages_free_per_group)) == (466, 4, [120, 128, 128, 90])
    assert ReplicaStatus.from_proto(msg).kv_pages_free_per_group == (120, 128, 128, 90)


@pytest.mark.parametrize("name", ["local", "n300", "t3k", "tg", "tg-4x2x4", "tg-1x8x4", "multi-galaxy", "multi-model",
                                  "tg-autoscale"])
def test_shipped_specs_load(name):
    spec = load_spec(ROOT / "cluster" / f"{name}.yaml")
    assert spec.config.num_replicas >= 1


def test_multi_model_spec():
    config = load_spec(ROOT / "cluster" / "multi-model.yaml").config
    assert [(m.served_name, m.policy, m.num_replicas) for m in config.served] == [
        ("llama-8b", "cache_aware", 2), ("llama-70b", "least_load", 1)]
    assert config.served[1].groups[0].mesh == "tg" and config.served[1].autoscale.max_replicas == 4
    assert config.num_replicas == 3


def test_one_model_form_is_one_served_model():
    config = parse_spec({"model": "smollm2", "policy": "least_load", "replicas": [{"count": 2}]}).config
    (model,) = config.served
    assert (model.served_name, model.policy, model.num_replicas) == ("smollm2", "least_load", 2)


def test_an_unknown_policy_of_a_model_is_named_before_ray_starts():
    from ttdist.router.deploy import deploy
    from ttdist.router.policies import UnknownPolicyError

    config = parse_spec({"engine": "scripted", "models": [{"name": "a"}, {"name": "b", "policy": "fastest"}]}).config
    with pytest.raises(UnknownPolicyError, match=r"models\[1\].policy: unknown policy 'fastest'"):
        deploy(config)


def test_autoscale_spec():
    config = load_spec(ROOT / "cluster" / "tg-autoscale.yaml").config
    a = config.autoscale
    assert (a.min_replicas, a.max_replicas, a.signal, a.target) == (1, 4, "ongoing_requests", 24)
    assert (a.upscale_delay_s, a.downscale_delay_s, config.num_replicas) == (10, 60, 1)
    assert config.served[0].autoscale is a   # the one-model form's pool is its one model's


def test_each_model_has_its_own_autoscale_config():
    config = parse_spec({"engine": "scripted", "models": [
        {"name": "a", "autoscale": {"min_replicas": 0, "max_replicas": 3, "target": {"queue_depth": 4}}},
        {"name": "b", "replicas": [{"count": 2}]},
        {"name": "c", "autoscale": {"max_replicas": 2, "initial_replicas": 2}}]}).config
    a, b, c = (m.autoscale for m in config.served)
    assert (a.min_replicas, a.max_replicas, a.signal, a.target) == (0, 3, "queue_depth", 4)
    assert b is None and (c.signal, c.start_replicas) == ("ongoing_requests", 2)
    assert config.num_replicas == 0 + 2 + 2


@pytest.mark.parametrize("raw,message", [
    ({"autoscale": {"min_replicas": 3, "max_replicas": 2}}, "spec: autoscale.min_replicas (3) must be <= max_replicas (2)"),
    ({"autoscale": {"target": {"tokens": 3}}}, "spec: autoscale.target: unknown signal 'tokens'"),
    ({"autoscale": {}, "replicas": [{}, {}]}, "spec: autoscale scales one replica pool: give one replica group, not 2"),
    ({"models": [{"name": "a"}, {"name": "b", "autoscale": {"max_replicas": 0}}]},
     "spec: models[1].autoscale.max_replicas must be >= 1, got 0"),
    ({"models": [{"name": "a", "autoscale": {"target": {"tokens": 3}}}]}, "spec: models[0].autoscale.target: unknown signal"),
    ({"models": [{"name": "a", "autoscale": {}, "replicas": [{}, {}]}]},
     "spec: models[0].autoscale scales one replica pool: give one replica group, not 2"),
    ({"models": [{"name": "a"}], "autoscale": {}}, "spec: autoscale is set per model under models:"),
])
def test_autoscale_spec_errors_name_the_field(raw, message):
    with pytest.raises(ClusterConfigError, match="^" + re.escape(message)):
        parse_spec(raw)


def test_ray_cluster_file_passes_rays_own_schema_with_a_tt_chips_node_type():
    import json

    import jsonschema
    import ray
    import yaml

    config = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text()))
    worker = config["available_node_types"]["tt_galaxy"]
    assert worker["resources"]["tt_chips"] == 32 and worker["min_workers"] == 0 and worker["max_workers"] >= 1


def test_galaxy_partition_spec():
    spec = load_spec(ROOT / "cluster" / "tg-4x2x4.yaml").config
    (group,) = spec.groups
    assert (group.count, group.mesh, group.resources["tt_chips"]) == (4, "2x4", 8.0)
    assert sorted(d for ids in group.devices for d in ids) == list(range(32))


@pytest.mark.parametrize("raw, field", [
    ({"replicas": [{"count": 0}]}, "count"),
    ({"replicas": [{"mesh": "3y3"}]}, "mesh"),
    ({"replicas": [{"backend": "gpu"}]}, "backend"),
    ({"replicas": [{"count": 2, "devices": [[0]]}]}, "devices"),
    ({"replicas": [{"mesh": "1x2", "devices": [[0]]}]}, "devices"),
    ({"replicas": [{"colour": "red"}]}, "colour"),
    ({"portt": 1}, "portt"),
    ({"port": 70000}, "port"),
    ({"engine": "magic"}, "engine"),
    ({"health": {"beat": 1}}, "beat"),
    ({"replicas": []}, "replicas"),
    ({"models": [{"name": "a"}, {"name": "a"}]}, "two models are named 'a'"),
    ({"models": [{"model": "smollm2"}]}, r"models\[0\].name is required"),
    ({"models": [{"name": "a", "colour": "red"}]}, "colour"),
    ({"models": [{"name": "a", "replicas": [{"count": 0}]}]}, r"models\[0\].replicas\[0\].count"),
    ({"models": [{"name": "a", "dtype": "float7"}]}, r"models\[0\].dtype"),
    ({"models": [{"name": "a", "autoscale": 3}]}, r"models\[0\].autoscale"),
    ({"model": "x", "models": [{"name": "a"}]}, "model is set per model"),
    ({"models": []}, "models must be a non-empty list"),
])
def test_bad_specs_name_the_field(raw, field):
    with pytest.raises(ClusterConfigError, match=field):
        parse_spec(raw)


def test_failed_replica_is_restarted_only_after_the_delay():
    reg = Registry(HealthConfig(restart_delay_s=2.0))
    reg.add(ReplicaRecord("r0", 0, "1x1", "sim"), now=0.0)
    reg.add(ReplicaRecord("r1", 0, "1x1", "sim"), now=0.0)
    for rid in ("r0", "r1"):
        reg.started(rid, 1.0, pid=11, node_id="n", address="a:1", kv_pages_total=12)
    reg.failed("r0", 5.0, "process gone")
    assert reg.due_restarts(5.0) == [] and reg.due_restarts(6.9) == []
    assert reg.replicas["r0"].state == "failed"
    assert reg.due_restarts(7.0) == ["r0"]


def test_no_restart_leaves_failed_replicas_failed():
    reg = Registry(HealthConfig(restart=False, restart_delay_s=0.0))
    reg.add(ReplicaRecord("r0", 0, "1x1", "sim"), now=0.0)
    reg.failed("r0", 1.0, "start failed")
    assert reg.due_restarts(1.0) == [] and reg.due_restarts(1000.0) == []


@pytest.mark.parametrize("field, value", [("restart_delay_s", -1.0), ("heartbeat_s", 0.0), ("failed_after_s", -2.0)])
def test_bad_health_setting_names_the_field(field, value):
    with pytest.raises(ClusterConfigError, match=f"health.{field}"):
        parse_spec({"health": {field: value}})


def test_serve_flags_set_the_restart_policy():
    from ttdist.cli import build_parser
    from ttdist.cli.serve import config_from_args

    default = config_from_args(build_parser().parse_args(["serve"]))
    assert (default.health.restart, default.health.restart_delay_s) == (True, 2.0)
    args = build_parser().parse_args(["serve", "--restart-delay", "0.5"])
    assert config_from_args(args).health.restart_delay_s == 0.5
    args = build_parser().parse_args(["serve", "--no-restart"])
    assert config_from_args(args).health.restart is False


def test_negative_restart_delay_flag_is_a_usage_error():
    from ttdist.cli import CommandError, build_parser
    from ttdist.cli.serve import config_from_args

    with pytest.raises(CommandError, match="restart_delay_s"):
        config_from_args(build_parser().parse_args(["serve", "--restart-delay", "-1"]))


@pytest.mark.parametrize("value", [-1, 20])
def test_niceness_out_of_range_names_the_field(value):
    with pytest.raises(ClusterConfigError, match="niceness must be in 0..19"):
        parse_spec({"niceness": value})
    assert parse_spec({"niceness": None}).config.niceness is None
