"""``ttdist serve`` in a subprocess: serves, then SIGTERM leaves no process behind (by PID)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.generation import greedy, run, stub_for
from tests.support.waiting import wait_for
from ttdist.v1 import generation_pb2 as pb

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _reported(proc: subprocess.Popen, pattern: str) -> str | None:
    """The group of ``pattern`` in the next line ``proc`` prints, if it is there."""
    line = proc.stdout.readline()
    if not line and proc.poll() is not None:
        raise AssertionError(f"serve exited with {proc.returncode}")
    match = re.search(pattern, line)
    return match.group(1) if match else None


def test_serve_then_sigterm_leaves_no_process(tiny_checkpoint, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TTDIST_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", "import sys; from ttdist.cli import main; sys.exit(main())",
           "serve", "--model", str(tiny_checkpoint), "--replicas", "2", "--port", "0", "--dashboard-port", "0",
           "--max-kv-pages", "32", "--policy", "least_load", "--http-port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        started_at = time.monotonic()
        address = wait_for(lambda: _reported(proc, r"serving .* on (\S+:\d+)"), 240, "serve to report its address", every=0)
        http = wait_for(lambda: _reported(proc, r"OpenAI API at (\S+)"), 240 - (time.monotonic() - started_at),
                        "serve to report its OpenAI API", every=0)
        assert http.startswith("http://127.0.0.1:"), "serve did not report its OpenAI API"
        import openai

        done = openai.OpenAI(base_url=http, api_key="none", max_retries=0).completions.create(
            model=Path(tiny_checkpoint).name, prompt=[1, 2, 3], max_tokens=5, temperature=0)
        assert done.usage.completion_tokens == 5 and done.choices[0].finish_reason == "length"
        channel, stub = stub_for(address)
        with channel:
            ids, complete = run(stub, greedy([1, 2, 3], 5))
            assert len(ids) == 5
            st = stub.GetClusterStatus(pb.ClusterStatusRequest())
        assert st.policy == "least_load" and len(st.replicas) == 2
        started = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)} | {proc.pid}
        replica_pids = {r.pid for r in st.replicas}
        assert replica_pids <= started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def survivors() -> set[int]:
        return {pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}
    wait_for(lambda: not survivors(), 30, lambda: f"no process left: {[psutil.Process(p).cmdline()[:3] for p in survivors()]}",
             every=0.2)
