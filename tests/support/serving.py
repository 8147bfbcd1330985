"""``ttdist serve`` in a subprocess, and the addresses it prints once it serves."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _reported(proc: subprocess.Popen, pattern: str) -> str | None:
    """The group of ``pattern`` in the next line ``proc`` prints, if it is there."""
    line = proc.stdout.readline()
    if not line and proc.poll() is not None:
        raise AssertionError(f"serve exited with {proc.returncode}")
    match = re.search(pattern, line)
    return match.group(1) if match else None


@contextlib.contextmanager
def serve_cli(checkpoint, tmp_path, *flags) -> Iterator[subprocess.Popen]:
    """``ttdist serve`` on ``checkpoint`` in a subprocess, killed on the way out if still running."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TTDIST_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", "import sys; from ttdist.cli import main; sys.exit(main())",
           "serve", "--model", str(checkpoint), "--port", "0", "--dashboard-port", "0", "--http-port", "0", *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def serve_addresses(proc: subprocess.Popen) -> tuple[str, str]:
    """The gRPC address and OpenAI base URL ``serve`` prints once it serves."""
    started_at = time.monotonic()
    address = wait_for(lambda: _reported(proc, r"serving .* on (\S+:\d+)"), 240, "serve to report its address", every=0)
    http = wait_for(lambda: _reported(proc, r"OpenAI API at (\S+)"), 240 - (time.monotonic() - started_at),
                    "serve to report its OpenAI API", every=0)
    assert http.startswith("http://127.0.0.1:"), "serve did not report its OpenAI API"
    return address, http
