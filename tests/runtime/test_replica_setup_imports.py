"""A replica's engine process imports ``build_core`` and unpickles its ``ReplicaSetup``: that
must not import Ray (about half a second of every model replica's start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_engine_build_imports_no_ray():
    code = (
        "import pickle, sys; from ttdist.runtime.replica_setup import ReplicaSetup, build_core;"
        "from ttdist.runtime.request_checks import ModelCard;"
        "blob = pickle.dumps((build_core, ReplicaSetup('r', '1x1', 'sim', ModelCard('m', 100, 64))));"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
