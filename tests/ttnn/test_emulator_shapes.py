"""The emulator against the real ttnn, live, on this lane's mocked system (n300, t3k or tg).

The same model steps (prefill, a chunk at a later position, decode, sampling) run twice through
``scripts/ttnn_op_shapes.py``, each in a process of its own (``import ttnn`` is one or the other
for a whole process): once on the real ttnn 0.81.1 on the mocked chips, once on the emulator.
Every ttnn call the backend makes is wrapped; for each, the outputs' logical shape, padded shape,
dtype, layout, memory layout (interleaved / height / width / block sharded) and buffer type
(DRAM / L1) must be identical, call by call. A call the emulator does not model fails its
recording with the call's name. The main lane holds the emulator to the recorded copies of these
runs (tests/mesh/test_ttnn_emu_shapes.py, tests/mesh/data)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

from tests.support.cli import ROOT  # noqa: E402

SCRIPT = ROOT / "scripts" / "ttnn_op_shapes.py"


def _record(mode: str, system: str, path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(SCRIPT), "record", mode, system, str(path)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=1200, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"recording on {mode} ttnn failed:\n{done.stderr[-4000:]}"


def test_every_emulated_call_returns_what_real_ttnn_returns(system, tmp_path):
    real, emu = tmp_path / "real.json", tmp_path / "emu.json"
    _record("real", system, real)
    _record("emu", system, emu)
    result = subprocess.run([sys.executable, str(SCRIPT), "compare", str(real), str(emu)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "calls agree" in result.stdout
