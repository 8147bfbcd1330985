"""``ttdist bench`` as a subprocess against a real router over scripted replicas (gRPC and OpenAI HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from ttdist.cli import main
from ttdist.router.openai import OpenAIServer, start_http_server
from ttdist.runtime.scripted_engine import ScriptedEngineConfig

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ScriptedEngineConfig(vocab_size=1000, step_s=0.004, prefill_s_per_token=0.0001, max_batch=8)
SCHEMA_KEYS = {"completed", "failed", "duration_s", "input_tokens", "output_tokens", "request_throughput",
               "output_throughput", "total_token_throughput", "goodput", "slo", "ttft", "tpot", "itl", "e2el", "errors"}


async def ttdist(*args: str, timeout: float = 180) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TTDIST_TARGET", "TTDIST_TOKEN")}
    env["PYTHONPATH"] = str(ROOT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from ttdist.cli import main; raise SystemExit(main())", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def finished(stack) -> int:
    return sum(e.stats().requests_finished_total for e in stack.engines)


async def test_grpc_counts_goodput_and_warmup(make_stack, tmp_path):  # noqa: F811
    stack = await make_stack(n=2, engine=ENGINE)
    out_file = tmp_path / "bench.json"
    code, out, err = await ttdist(
        "bench", "--target", f"127.0.0.1:{stack.server.port}", "--num-prompts", "24", "--input-len", "8..40",
        "--output-len", "12", "--request-rate", "60", "--warmup", "3", "--slo", "ttft=15ms,tpot=6ms",
        "--json", str(out_file), "--no-progress")
    assert code == 0, err
    report = json.loads(out_file.read_text())
    assert report["version"] == 1 and len(report["runs"]) == 1
    run = report["runs"][0]
    s, rows = run["summary"], run["requests"]
    assert SCHEMA_KEYS <= set(s) and set(s["ttft"]) == {"mean", "std", "p50", "p90", "p99"}
    # the warm-up ran on the replicas but is in no figure
    assert finished(stack) == 24 + 3
    assert (s["completed"], s["failed"], len(rows)) == (24, 0, 24)
    assert s["output_tokens"] == 24 * 12 == sum(r["output_tokens"] for r in rows)
    assert s["input_tokens"] == sum(r["prompt_tokens"] for r in rows)
    assert all(8 <= r["prompt_tokens"] <= 40 for r in rows)
    assert all(len(r["itl_s"]) == 11 for r in rows)
    # goodput counts exactly the requests within both SLOs
    good = sum(r["ttft_s"] <= 0.015 and r["tpot_s"] <= 0.006 for r in rows)
    assert s["goodput"] == pytest.approx(good / s["duration_s"])
    assert s["goodput"] <= s["request_throughput"]
    assert s["slo"] == {"ttft": 0.015, "tpot": 0.006}
    assert "Serving Benchmark Result" in out and "Goodput (req/s) [ttft<=15ms tpot<=6ms]" in out
    assert "P99 TTFT (ms):" in out


async def test_sweep_prints_a_table_and_plots(make_stack, tmp_path):  # noqa: F811
    stack = await make_stack(n=1, engine=ENGINE)
    code, out, err = await ttdist(
        "bench", "--target", f"127.0.0.1:{stack.server.port}", "--num-prompts", "10", "--input-len", "16",
        "--output-len", "6", "--sweep", "40,inf", "--max-concurrency", "4", "--warmup", "0",
        "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png"), "--no-progress")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["LOAD", "REQ/S"]
    assert lines[1].startswith("rate 40/s poisson, concurrency 4") and lines[2].startswith("rate inf, concurrency 4")
    runs = json.loads((tmp_path / "s.json").read_text())["runs"]
    assert [r["load"]["rate"] for r in runs] == [40.0, None]
    assert all(r["summary"]["completed"] == 10 and r["summary"]["output_tokens"] == 60 for r in runs)
    assert finished(stack) == 20
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_openai_http_with_concurrency_and_shared_prefixes(make_stack, tmp_path):  # noqa: F811
    stack = await make_stack(n=2, engine=ENGINE)
    http = await start_http_server(OpenAIServer(stack.router), "127.0.0.1", 0)
    try:
        code, out, err = await ttdist(
            "bench", "--backend", "openai", "--base-url", f"http://127.0.0.1:{http.port}", "--vocab-size", "1000",
            "--workload", "shared-prefix", "--num-prefixes", "3", "--prompts-per-prefix", "4", "--prefix-len", "32",
            "--suffix-len", "8", "--output-len", "5", "--max-concurrency", "3", "--num-prompts", "12",
            "--warmup", "2", "--slo", "e2el=60s", "--json", str(tmp_path / "o.json"), "--no-progress")
    finally:
        await http.stop()
    assert code == 0, err
    s = json.loads((tmp_path / "o.json").read_text())["runs"][0]["summary"]
    assert (s["completed"], s["input_tokens"], s["output_tokens"]) == (12, 12 * 40, 12 * 5)
    assert s["goodput"] == pytest.approx(s["request_throughput"])
    assert finished(stack) == 14


async def test_jsonl_prompts(make_stack, tmp_path):  # noqa: F811
    stack = await make_stack(n=1, engine=ENGINE)
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt_token_ids": [11, 12, 13], "max_tokens": 4}\n\n{"prompt_token_ids": [20, 21], "max_tokens": 7}\n')
    code, out, err = await ttdist("bench", "--target", f"127.0.0.1:{stack.server.port}", "--workload", "jsonl",
                                  "--dataset", str(data), "--warmup", "0", "--json", str(tmp_path / "j.json"),
                                  "--no-progress")
    assert code == 0, err
    s = json.loads((tmp_path / "j.json").read_text())["runs"][0]["summary"]
    assert (s["completed"], s["input_tokens"], s["output_tokens"]) == (2, 5, 11)


async def test_a_rate_schedule_sends_each_phase_its_count(make_stack, tmp_path):  # noqa: F811
    stack = await make_stack(n=1, engine=ENGINE)
    code, out, err = await ttdist(
        "bench", "--target", f"127.0.0.1:{stack.server.port}", "--rate-schedule", "10:0.5,40:0.5,0:0.5,10:0.3",
        "--arrival", "fixed", "--input-len", "4", "--output-len", "3", "--warmup", "0",
        "--json", str(tmp_path / "r.json"), "--no-progress")
    assert code == 0, err
    run = json.loads((tmp_path / "r.json").read_text())["runs"][0]
    assert run["load"]["schedule"] == [[10.0, 0.5], [40.0, 0.5], [0.0, 0.5], [10.0, 0.3]]
    assert run["summary"]["completed"] == 5 + 20 + 3 == finished(stack) and run["summary"]["failed"] == 0
    starts = [r["start_s"] for r in run["requests"]]
    assert starts == sorted(starts) and starts[25] - starts[24] >= 0.5    # the pause
    assert "rate:s 10:0.5,40:0.5,0:0.5,10:0.3 fixed" in out


@pytest.mark.parametrize("args,needle", [
    (["--request-rate", "0"], "--request-rate: must be > 0"),
    (["--request-rate", "-3"], "--request-rate: must be > 0"),
    (["--sweep", "1,0"], "--sweep: must be > 0"),
    (["--sweep", "1,fast"], "--sweep:"),
    (["--slo", "ttft=fast"], "--slo: 'ttft=fast'"),
    (["--slo", "latency=5ms"], "--slo: 'latency=5ms'"),
    (["--input-len", "20..10"], "--input-len:"),
    (["--output-len", "zero"], "--output-len:"),
    (["--max-concurrency", "0"], "--max-concurrency: must be at least 1"),
    (["--num-prompts", "0"], "--num-prompts:"),
    (["--rate-schedule", "1:5,fast"], "--rate-schedule: 'fast'"),
    (["--rate-schedule", "0:5"], "--rate-schedule: '0:5' sends no request"),
    (["--rate-schedule", "1:5", "--sweep", "1,2"], "--rate-schedule: sets the rates"),
    (["--rate-schedule", "1:5", "--num-prompts", "4"], "--rate-schedule: sets the rates"),
    (["--backend", "openai"], "--vocab-size:"),
    (["--workload", "jsonl", "--dataset", "/nonexistent.jsonl"], "--dataset:"),
])
def test_bad_input_is_one_line_naming_the_flag(args, needle, capsys):
    # port 9 (discard) is never a router: input errors must come before any connection
    code = main(["bench", "--target", "127.0.0.1:9", "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
