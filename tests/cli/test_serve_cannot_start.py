"""``ttdist serve`` (the real CLI in a subprocess, sim backend) on a checkpoint that can never
start: it exits with code 2 within a bounded time, the reason on its console, instead of
restarting the replica with backoff until its crash loop while printing nothing.

One case per place a start fails for good: the coordinator (a checkpoint without weights), the
replica actor (a tokenizer.json that is not one) and the replica's engine process (a mesh whose
KV cache cannot fit: a 2x2 mesh has two user groups, a cap of one page leaves none for each).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttdist.model.testing import tiny_llama_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 180   # a replica that keeps failing is given up after 5 starts with doubling backoff, then 600 s


def _without_weights(path: Path) -> list[str]:
    for file in path.glob("*.safetensors*"):
        file.unlink()
    return []


def _bad_tokenizer(path: Path) -> list[str]:
    (path / "tokenizer.json").write_text("{not json")
    return []


def _kv_cache_does_not_fit(path: Path) -> list[str]:
    return ["--mesh", "2x2", "--max-kv-pages", "1"]


@pytest.mark.parametrize("spoil, reason", [
    (_without_weights, "no *.safetensors files"),
    (_bad_tokenizer, "TokenizerError"),
    (_kv_cache_does_not_fit, "KvCacheFitError"),
], ids=["no-weights", "bad-tokenizer", "kv-cache-does-not-fit"])
def test_serve_exits_2_with_the_reason_when_no_replica_can_ever_start(tmp_path, spoil, reason):
    checkpoint = tiny_llama_checkpoint(tmp_path / "tiny", seed=3)
    flags = spoil(checkpoint)
    console = _run_until_exit(tmp_path, "serve", "--model", str(checkpoint), "--port", "0", "--dashboard-port", "-1",
                              "--restart-delay", "0.5", *flags)
    error = [line for line in console.splitlines() if line.startswith("ttdist serve: error:")]
    assert error and "cannot serve" in error[-1] and reason in error[-1], console[-3000:]


def test_launch_exits_2_when_every_replica_fails_for_good(tmp_path):
    checkpoint = tiny_llama_checkpoint(tmp_path / "tiny", seed=3)
    _bad_tokenizer(checkpoint)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: {checkpoint}\nport: 0\ndashboard_port: null\napi:\n  http_port: null\n"
                    "health:\n  restart_delay_s: 0.5\nreplicas:\n  - count: 2\n    mesh: 1x1\n")
    console = _run_until_exit(tmp_path, "launch", str(spec))
    error = [line for line in console.splitlines() if line.startswith("ttdist launch: error:")]
    assert error and "no replica of tiny can start" in error[-1] and "TokenizerError" in error[-1], console[-3000:]


def _run_until_exit(tmp_path: Path, *args: str) -> str:
    """Run ``ttdist *args``; it must exit with code 2 within ``BOUND_S``, never serving. Its console."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TTDIST_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", "import sys; from ttdist.cli import main; sys.exit(main())", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        console, _ = proc.communicate(timeout=BOUND_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        console, _ = proc.communicate()
        raise AssertionError(f"ttdist {args[0]} still running after {BOUND_S} s:\n{console[-3000:]}") from None
    assert proc.returncode == 2, console[-3000:]
    assert "ttdist: serving" not in console
    assert time.monotonic() - t0 < BOUND_S
    return console
