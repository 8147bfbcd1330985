"""Every script in examples/ runs against a real gRPC server (the scripted backend)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.scripted_generation import MODEL_ID, expected_text

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, address: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--target", address, *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_generate_example(scripted):
    server = scripted()
    out = run_example("generate.py", server.address).splitlines()
    assert out[0] == repr(expected_text(len("The capital of France is"), 16))
    assert out[1] == "16 tokens, finish=length, replica=r0"
    assert out[2] == expected_text(len("Once upon a time"), 32)
    assert server.wait_for(lambda seen: len(seen.cancelled) == 1)


def test_stream_async_example(scripted):
    server = scripted(token_delay_s=0.01)
    out = run_example("stream_async.py", server.address).splitlines()
    assert out[0] == f"[0] The sky is{expected_text(len('The sky is'), 16)!r}"
    assert out[-1] == "cancelled the long request"
    assert server.wait_for(lambda seen: len(seen.cancelled) == 1)


def test_batch_example(scripted):
    server = scripted(hold_until_active=3)
    out = run_example("batch.py", server.address, "--concurrency", "3").splitlines()
    assert len(out) == 10
    prompt = "Question 7: what is 7 plus 7? Answer:"
    assert out[7] == f"{prompt}{expected_text(len(prompt), 8)!r}"
    assert server.seen.peak_active == 3


def test_cluster_status_example(scripted):
    out = run_example("cluster_status.py", scripted().address)
    assert out.splitlines()[:3] == ["health: SERVING", f"model {MODEL_ID}: context 256, vocab 108",
                                    "policy least_load, 2 replicas"]


def test_errors_and_retries_example(scripted):
    server = scripted(token_delay_s=0.01, unavailable_first=1)
    out = run_example("errors_and_retries.py", server.address).splitlines()
    assert out[0] == "invalid request (temperature): temperature must be in [0, inf], got -1"
    assert out[1] == "not found: unknown model 'no-such-model'"
    assert out[2].startswith("deadline: ")
    assert out[3:] == ["aborted: True", "finish: abort"]
