"""The emulator returns what the real ttnn 0.81.1 returns: for every ttnn call the ttnn backend
makes while it runs a tiny Llama (prefill, a later chunk, decode, sampling), the same logical
and padded shapes, dtype, layout, memory layout and buffer type as recorded on mocked chips
(tests/mesh/data, written by scripts/ttnn_op_shapes.py; the ttnn lane compares live)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ttnn_op_shapes.py"


@pytest.mark.parametrize("system", ["n300", "t3k", "tg"])
def test_emulated_calls_return_what_real_ttnn_returns(tmp_path, system):
    got = tmp_path / f"{system}.json"
    subprocess.run([sys.executable, str(SCRIPT), "record", "emu", system, str(got)], check=True, cwd=ROOT, timeout=600)
    result = subprocess.run([sys.executable, str(SCRIPT), "compare", str(ROOT / "tests/mesh/data" / f"ttnn_op_shapes_{system}.json"),
                             str(got)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout


def test_a_call_the_emulator_does_not_model_is_named(monkeypatch):
    import importlib.util

    from ttdist.mesh import ttnn_emu

    loader = importlib.util.spec_from_file_location("ttnn_op_shapes", SCRIPT)
    script = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(script)
    monkeypatch.setattr(script, "called_names", lambda: ["add", "experimental.frobnicate_heads"])
    with ttnn_emu.installed() as ttnn, pytest.raises(SystemExit, match=r"emulator .* has no ttnn\.experimental\.frobnicate_heads"):
        script.wrap_calls(ttnn, [])
