"""The ``ttdist`` command line run as a subprocess: generate / status against a real gRPC server
over the scripted backend, convert on tiny checkpoints, help texts and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from tests.support.cli import ROOT, assert_one_line_error, free_port, ttdist
from tests.support.scripted_generation import MODEL_ID, Script, ScriptedServer, expected_ids, expected_text



def test_generate_streams_the_text(scripted):
    server = scripted()
    proc = ttdist("generate", "hello", "-n", "5", "--target", server.address)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected_text(5, 5) + "\n"
    req = server.seen.requests[0]
    assert (req.text, req.stream, req.sampling.max_tokens) == ("hello", True, 5)


def test_generate_json_prints_the_completion(scripted):
    server = scripted()
    proc = ttdist("generate", "abc", "-n", "3", "--json", "--seed", "4", "--stop", "x", "--stop", "y",
                  "--request-id", "cli-1", "--target", server.address)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["request_id"] == "cli-1"
    assert out["text"] == expected_text(3, 3)
    assert out["token_ids"] == expected_ids(3, 3)
    assert out["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "cached_tokens": 0}
    req = server.seen.requests[0]
    assert (req.stream, req.sampling.seed, list(req.sampling.stop)) == (False, 4, ["x", "y"])


def test_generate_sends_penalties_and_leaves_model_defaults_to_the_server(scripted):
    server = scripted()
    proc = ttdist("generate", "abc", "-n", "3", "--repetition-penalty", "1.3", "--presence-penalty", "0.5",
                  "--frequency-penalty", "-0.25", "--logit-bias", "5=2.5", "--logit-bias", "9=-100", "--min-p", "0.1",
                  "--min-tokens", "2", "--target", server.address)
    assert proc.returncode == 0, proc.stderr
    s = server.seen.requests[0].sampling
    assert (s.repetition_penalty, s.presence_penalty, s.frequency_penalty, s.min_p, s.min_tokens) == \
        pytest.approx((1.3, 0.5, -0.25, 0.1, 2))
    assert dict(s.logit_bias) == {5: 2.5, 9: -100.0}
    assert not any(s.HasField(f) for f in ("temperature", "top_k", "top_p"))   # the model's defaults apply
    bad = ttdist("generate", "abc", "--logit-bias", "5:2", "--target", server.address)
    assert bad.returncode == 2 and "--logit-bias takes ID=BIAS" in bad.stderr


def test_generate_logprobs_prints_each_tokens_logprob_and_top_after_the_text(scripted):
    server = scripted()
    proc = ttdist("generate", "hi", "-n", "3", "--logprobs", "2", "--target", server.address)
    assert proc.returncode == 0, proc.stderr
    ids = expected_ids(2, 3)
    text, title, *rows = proc.stdout.splitlines()
    assert text == expected_text(2, 3)
    assert title.startswith("logprobs (position, token id, logprob")
    assert [row.split() for row in rows] == [[str(i), str(t), f"{-t / 1000:.4f}", "top:", str(t), f"{-t / 1000:.4f}",
                                              str(t + 1), f"{-(t + 1) / 1000:.4f}"] for i, t in enumerate(ids)]
    assert server.seen.requests[0].sampling.logprobs == 2 and not server.seen.requests[0].sampling.HasField("prompt_logprobs")
    out = json.loads(ttdist("generate", "hi", "-n", "2", "--logprobs", "1", "--json", "--target", server.address).stdout)
    assert [(lp["token_id"], lp["top"][0][0]) for lp in out["logprobs"]] == [(t, t) for t in ids[:2]]
    assert [lp["logprob"] for lp in out["logprobs"]] == pytest.approx([-t / 1000 for t in ids[:2]])
    bad = ttdist("generate", "hi", "--logprobs", "x", "--target", server.address)
    assert bad.returncode == 2 and "--logprobs" in bad.stderr


def test_generate_reads_stdin_and_token_ids_and_sends_the_token(scripted):
    server = scripted(required_token="tok")
    env = {"TTDIST_TOKEN": "tok", "TTDIST_TARGET": server.address}
    proc = ttdist("generate", "-", "-n", "2", "-v", stdin="from stdin", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected_text(10, 2) + "\n"
    assert "[2 tokens · prompt 10" in proc.stderr and "finish length" in proc.stderr
    proc = ttdist("generate", "--token-ids", "7, 8,9", "-n", "2", env=env)
    assert proc.stdout == expected_text(3, 2) + "\n"
    assert list(server.seen.requests[1].token_ids.ids) == [7, 8, 9]
    assert server.seen.metadata[1]["authorization"] == "Bearer tok"


def test_status_table_and_json(scripted):
    server = scripted()
    proc = ttdist("status", "--target", server.address)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["model:", MODEL_ID, "policy:", "least_load", "replicas:", "2", "(1", "ready)"]
    assert lines[2].split()[:4] == ["REPLICA", "STATE", "MESH", "BACKEND"]
    assert lines[3].split() == ["r0", "ready", "1x2", "sim", "node-a", "1234", "60/64", "(94%)", "600", "(host", "cap)",
                                "1.00+0.50+0.00", "of", "12", "GiB", "1", "0", "12.5"]
    assert lines[4].split()[:3] == ["r1", "unhealthy", "8x4"]       # r0 has one user group: no line below it
    assert lines[5] == " " * lines[2].index("KV PAGES FREE") + "4 user groups, free 512/400/512/376"
    assert len(lines) == 6
    proc = ttdist("status", "--json", "--target", server.address)
    out = json.loads(proc.stdout)
    assert [r["kv_pages_total"] for r in out["replicas"]] == [64, 2048]
    assert [(r["kv_user_groups"], r["kv_pages_free_per_group"]) for r in out["replicas"]] == [
        (1, []), (4, [512, 400, 512, 376])]


@pytest.mark.parametrize("args, code, needles", [
    (["generate", "hi", "--model", "nope"], 2, ["not_found", "unknown model 'nope'"]),
    (["generate", "hi", "--top-p", "3"], 2, ["--top-p", "top_p must be in [0, 1]"]),
    (["generate", "hi", "-n", "-1"], 2, ["--max-tokens"]),
    (["generate", "hi", "--token-ids", "1,2"], 2, ["not both"]),
    (["generate", "--token-ids", "1,a"], 2, ["--token-ids"]),
    (["generate", "hi", "--timeout", "-2"], 2, ["--timeout"]),
    (["status", "--watch", "0"], 2, ["--watch"]),
    (["status", "--wait", "-1"], 2, ["--wait"]),
    (["status", "--ca-cert", "/nonexistent/ca.pem"], 2, ["--ca-cert", "cannot read"]),
])
def test_user_mistakes_are_one_line_errors(scripted, args, code, needles):
    server = scripted()
    proc = ttdist(*args, "--target", server.address)
    assert_one_line_error(proc, code, *needles)


@pytest.mark.parametrize("status, code", [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 3),
    (grpc.StatusCode.INVALID_ARGUMENT, 2),
    (grpc.StatusCode.INTERNAL, 1),
])
def test_server_errors_map_to_exit_codes(scripted, status, code):
    server = scripted(error=(status, "scripted failure"))
    proc = ttdist("generate", "hi", "--target", server.address)
    assert_one_line_error(proc, code, "scripted failure", status.name.lower())


def test_unreachable_router_is_exit_code_3_with_a_hint():
    proc = ttdist("status", "--target", "127.0.0.1:9")
    assert_one_line_error(proc, 3, "unavailable", "is the router running at 127.0.0.1:9?")


def test_wait_reaches_a_router_that_comes_up_late():
    port = free_port()
    cli = subprocess.Popen(
        [sys.executable, "-c", "from ttdist.cli import main; raise SystemExit(main())",
         "generate", "late", "-n", "3", "--wait", "60", "--target", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    time.sleep(1.0)  # the command is already retrying against a closed port
    server = ScriptedServer(Script(), port=port).start()
    try:
        out, err = cli.communicate(timeout=90)
    finally:
        server.stop()
    assert cli.returncode == 0, err
    assert out == expected_text(4, 3) + "\n"


def test_empty_prompt_is_refused(scripted):
    server = scripted()
    proc = ttdist("generate", "--target", server.address, stdin="")
    assert_one_line_error(proc, 2, "prompt")
    assert server.seen.requests == []


def test_ctrl_c_stops_the_stream_and_the_server_sees_it(scripted):
    server = scripted(token_delay_s=0.05)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ttdist.cli import main; raise SystemExit(main())",
         "generate", "hi", "-n", "1000", "--request-id", "ctrl-c", "--target", server.address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    try:
        assert server.wait_for(lambda seen: seen.active == 1, timeout=60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert server.wait_for(lambda seen: "ctrl-c" in seen.cancelled)
    assert "ctrl-c" not in server.seen.completed


@pytest.mark.parametrize("command, needle", [
    ([], "Quick start"),
    (["generate"], "examples:"),
    (["status"], "KV pages"),
    (["convert"], "converted-weight cache"),
])
def test_help_is_helpful(command, needle):
    proc = ttdist(*command, "--help")
    assert proc.returncode == 0
    assert needle in proc.stdout


def test_no_command_is_a_usage_error():
    proc = ttdist()
    assert proc.returncode == 2
    assert "COMMAND" in proc.stderr


@pytest.fixture(scope="module")
def small_vocab_checkpoint(tiny_checkpoints):
    return tiny_checkpoints(with_tokenizer=False, vocab_size=256)


def test_convert_writes_the_cache_once_with_progress(small_vocab_checkpoint, tmp_path):
    proc = ttdist("convert", str(small_vocab_checkpoint), "--mesh", "1x2", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    entry = Path(proc.stdout.strip())
    assert entry.parent == tmp_path / "cache"
    manifest = json.loads((entry / "manifest.json").read_text())
    assert (manifest["mesh"], manifest["dtype"]) == ("1x2", "bfloat16")
    assert "convert" in proc.stderr and "100%" in proc.stderr
    again = ttdist("convert", str(small_vocab_checkpoint), "--mesh", "1x2", "--cache-dir", str(tmp_path / "cache"),
                   "--no-progress")
    assert (again.returncode, again.stdout, again.stderr) == (0, proc.stdout, "")


def test_convert_errors_are_one_line(small_vocab_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((small_vocab_checkpoint / "config.json").read_text())
    data = (small_vocab_checkpoint / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert_one_line_error(ttdist("convert", str(broken), *cache), 2, "model.safetensors", "tensor")
    assert_one_line_error(ttdist("convert", str(tmp_path / "missing"), *cache), 2, "no such checkpoint")
    assert_one_line_error(ttdist("convert", str(small_vocab_checkpoint), "--mesh", "banana", *cache), 2, "banana")
    assert_one_line_error(ttdist("convert", str(small_vocab_checkpoint), "--dtype", "int3", *cache), 2, "int3")
