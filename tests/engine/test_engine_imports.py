"""The engine stays plain Python: importing it loads neither torch nor ttnn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_engine_imports_no_torch_or_ttnn():
    code = (
        "import sys, ttdist.engine, ttdist.engine.engine, ttdist.engine.tokenizer;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ttnn')))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
