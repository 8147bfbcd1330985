"""Typed config errors: every bad value in a cluster spec file or a `ttdist serve` flag is one
line naming the field, exit code 2, no traceback, and nothing is started.

Most rows run the command in this process (``main``); the rows marked ``subprocess`` run the
real console command, as a user would.
"""

from __future__ import annotations

import pytest

from tests.support.cli import assert_one_line_error, ttdist
from ttdist.cli import main

# (spec file text, what the one line must contain)
SPEC_ERRORS = [
    ("replicas: [{count: two}]", "replicas[0].count must be an integer, got 'two'"),
    ("replicas: [{count: 0}]", "replicas[0].count must be >= 1"),
    ("replicas: [{mesh: 9q9}]", "replicas[0].mesh"),
    ("replicas: [{backend: gpu}]", "replicas[0].backend must be one of sim, ttnn"),
    ("replicas: [{count: 2, mesh: 1x2, devices: [[0, 1]]}]", "replicas[0].devices lists 1 device sets for 2 replicas"),
    ("replicas: [{mesh: 1x2, devices: [[0, 0]]}]", "replicas[0].devices: [0, 0] must be distinct device ids >= 0"),
    ("replicas: [{mesh: 1x2, devices: [[-1, 2]]}]", "must be distinct device ids >= 0"),
    ("replicas: [{mesh: 1x2, devices: [[0, x]]}]", "replicas[0].devices must be a list of device-id lists"),
    ("replicas: [{mesh: 1x2, devices: [[0, 1, 2]]}]", "is not 2 chips for mesh 1x2"),
    ("replicas: [{resources: {tt_chips: lots}}]", "replicas[0].resources must map resource names to numbers"),
    ("replicas: [{dispatch_core: sideways}]", "replicas[0].dispatch_core must be one of"),
    ("replicas: [{command_queues: 3}]", "replicas[0].command_queues must be 1, 2 or 0"),
    ("replicas: [{emulate: true}]", "replicas[0].emulate runs the ttnn backend on emulated chips: it needs backend ttnn"),
    ("replicas: [{backend: ttnn, emulate: maybe}]", "replicas[0].emulate must be true or false"),
    ("replicas: [{colour: blue}]", "replicas[0]: unknown setting 'colour'"),
    ("replicas: {count: 1}", "replicas must be a non-empty list of groups"),
    ("dtype: float7", "dtype: unknown precision 'float7'"),
    ("model: /no/such/checkpoint", "model: no checkpoint directory at /no/such/checkpoint"),
    ("port: http", "port must be an integer, got 'http'"),
    ("port: 70000", "port must be in 0..65535"),
    ("dashboard_port: -3", "dashboard_port must be in 0..65535"),
    ("max_batch: 0", "max_batch must be >= 1"),
    ("max_context: 1", "max_context must be >= 2"),
    ("page_size: 16.5", "page_size must be an integer"),
    ("engine: gpu", "engine must be one of model, scripted"),
    ("niceness: 40", "niceness must be in 0..19"),
    ("ready_wait_s: -1", "ready_wait_s must be >= 0"),
    ("weights_cache: 5", "weights_cache must be a string or null"),
    ("kv_host_bytes: 100TB", "kv_host_bytes: the host KV tier's 100,000,000,000,000 bytes are more than this host's RAM"),
    ("kv_node_bytes: 100TB", "kv_node_bytes: the node KV tier's 100,000,000,000,000 bytes are more than this host's RAM"),
    ("colour: blue", "unknown setting 'colour'"),
    ("health: {heartbeat_s: soon}", "health.heartbeat_s must be a number, got 'soon'"),
    ("health: {heartbeat_s: 0}", "health.heartbeat_s must be > 0"),
    ("health: {restart: maybe}", "health.restart must be true or false"),
    ("health: {crash_loop_failures: 0}", "health.crash_loop_failures must be an integer >= 1"),
    ("health: {stall_after_s: -2}", "health.stall_after_s must be > 0"),
    ("health: {bogus: 1}", "unknown health setting 'bogus'"),
    ("models: [{name: a}, {name: a}]", "models: two models are named 'a'"),
    ("models: [{model: smollm2}]", "models[0].name is required"),
    ("models: [{name: a, replicas: [{mesh: 3y3}]}]", "models[0].replicas[0].mesh"),
    ("models: [{name: a, size: 8}]", "unknown models[0] setting 'size'"),
    ("model: smollm2\nmodels: [{name: a}]", "model is set per model under models:"),
    ("health: 5", "health must be a mapping"),
    ("address: 12", "address must be a string"),
    ("tracing: {sample_ratio: 1.5}", "tracing.sample_ratio must be in [0, 1], got 1.5"),
    ("tracing: {sample_ratio: often}", "tracing.sample_ratio must be a number, got 'often'"),
    ("tracing: {otlp_traces_endpoint: 'ftp://x:4317'}", "tracing.otlp_traces_endpoint: not host:port or a URL"),
    ("tracing: {export_interval_s: 0}", "tracing.export_interval_s must be > 0"),
    ("tracing: {endpoint: x}", "unknown tracing setting 'endpoint'"),
    ("autoscale: {min_replicas: 3, max_replicas: 2}", "autoscale.min_replicas (3) must be <= max_replicas (2)"),
    ("autoscale: {target: {gpu_use: 0.5}}", "autoscale.target: unknown signal 'gpu_use'; one of ongoing_requests"),
    ("autoscale: {max_replica: 2}", "autoscale: unknown setting 'max_replica'"),
    ("autoscale: 4", "autoscale must be a mapping of settings"),
    ("autoscale: {}\nreplicas: [{}, {mesh: 1x2}]", "autoscale scales one replica pool: give one replica group, not 2"),
    ("models: [{name: a}, {name: b, autoscale: {min_replicas: 3, max_replicas: 2}}]",
     "models[1].autoscale.min_replicas (3) must be <= max_replicas (2)"),
    ("models: [{name: a, autoscale: {target: {gpu_use: 1}}}]", "models[0].autoscale.target: unknown signal 'gpu_use'"),
    ("models: [{name: a}]\nautoscale: {}", "autoscale is set per model under models:"),
    ("- just\n- a list", "the spec must be a mapping of settings"),
    ("replicas: [", "not valid YAML at line 2, column 1: expected the node content"),
]


@pytest.mark.parametrize("text, needle", SPEC_ERRORS, ids=[n.split(" ")[0] for _, n in SPEC_ERRORS])
def test_bad_spec_value_is_one_typed_line(text, needle, tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text + "\n")
    code = main(["launch", str(spec)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err, err
    if not needle.startswith("model:"):               # the model folder is checked at launch, after reading
        assert str(spec) in err, err


# (serve flags, what the one line must contain)
FLAG_ERRORS = [
    (["--replicas", "0"], "--replicas: replicas[0].count must be >= 1"),
    (["--mesh", "3y"], "--mesh: replicas[0].mesh"),
    (["--dtype", "float7"], "--dtype: dtype: unknown precision 'float7'"),
    (["--backend", "sim", "--emulate"], "--emulate: replicas[0].emulate runs the ttnn backend on emulated chips"),
    (["--model", "/no/such/checkpoint"], "model: no checkpoint directory at /no/such/checkpoint"),
    (["--port", "99999"], "--port: port must be in 0..65535"),
    (["--restart-delay", "-1"], "--restart-delay: health.restart_delay_s must be >= 0"),
    (["--ready-wait", "-5"], "--ready-wait: ready_wait_s must be >= 0"),
    (["--max-kv-pages", "0"], "--max-kv-pages: max_kv_pages must be >= 1"),
    (["--otlp-traces-sample-ratio", "2"], "--otlp-traces-sample-ratio: tracing.sample_ratio must be in [0, 1]"),
    (["--otlp-traces-endpoint", "ftp://collector"], "--otlp-traces-endpoint: tracing.otlp_traces_endpoint: not host"),
    (["--kv-host-bytes", "100PB"], "--kv-host-bytes: kv_host_bytes: cannot read the size '100PB'"),
    (["--kv-host-bytes", "100TB"], "--kv-host-bytes: kv_host_bytes: the host KV tier's 100,000,000,000,000 bytes are more than"),
    (["--kv-node-bytes", "-5"], "--kv-node-bytes: kv_node_bytes: cannot read the size '-5'"),
    (["--kv-node-bytes", "100TB"], "--kv-node-bytes: kv_node_bytes: the node KV tier's 100,000,000,000,000 bytes are more than"),
]


@pytest.mark.parametrize("flags, needle", FLAG_ERRORS, ids=[f[0] for f, _ in FLAG_ERRORS])
def test_bad_serve_flag_is_one_typed_line(flags, needle, capsys):
    code = main(["serve", "--dashboard-port", "-1", *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err, err


def test_the_console_command_reports_spec_and_flag_errors_the_same_way(tmp_path):
    """The real command in a subprocess: exit 2, one line, no traceback, before Ray starts."""
    spec = tmp_path / "bad.yaml"
    spec.write_text("replicas: [{count: 1, mesh: 1x2, devices: [[0, 0]]}]\n")
    assert_one_line_error(ttdist("launch", str(spec)), 2, "replicas[0].devices", "distinct device ids")
    policy = tmp_path / "policy.yaml"
    policy.write_text("engine: scripted\npolicy: fastest\n")
    assert_one_line_error(ttdist("launch", str(policy)), 2, "unknown policy 'fastest'")
    assert_one_line_error(ttdist("serve", "--dtype", "float7"), 2, "--dtype", "unknown precision 'float7'")
    assert_one_line_error(ttdist("serve", "--policy", "fastest", "--dashboard-port", "-1"), 2, "unknown policy")
    assert_one_line_error(ttdist("serve", "--kv-host-bytes", "100TB", "--dashboard-port", "-1"), 2, "--kv-host-bytes",
                          "more than this host's RAM")
    # argparse's own type errors: exit 2, no traceback, the flag named
    proc = ttdist("serve", "--replicas", "two")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--replicas: invalid int value: 'two'" in proc.stderr.strip().splitlines()[-1]
