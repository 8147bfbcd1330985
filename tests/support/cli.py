"""The ``ttdist`` command in a child process, as a user runs it, and what its tests check."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from ttdist.cli import main; raise SystemExit(main())"]


def ttdist(*args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 120):
    """Run ``ttdist ARGS`` the way the console script does; the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("TTDIST_TARGET", "TTDIST_TOKEN")}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run(
        [*CLI, *args], input=stdin if stdin is not None else "", capture_output=True, text=True, env=full_env,
        cwd=ROOT, timeout=timeout)


def assert_one_line_error(proc, code: int, *needles: str):
    """The command failed with exit ``code`` and one line of stderr naming every needle, no traceback."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interrupt(server: subprocess.Popen, timeout: float = 120) -> None:
    """Ctrl-C a ``ttdist serve`` child and wait for it; killed if it outlives ``timeout``."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
