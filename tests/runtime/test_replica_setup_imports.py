"""What a replica's processes import on the way to serving, kept to what they use: its engine
process imports ``build_core`` and unpickles its ``ReplicaSetup`` (no Ray: ~0.5 s of every model
replica's start), and the replica actor unpickles the ``WeightSource`` its engine process opens
(no weights loader and its ``ml_dtypes``: ~0.8 s before ``start`` ran)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported(code: str, prefixes: tuple[str, ...]) -> list[str]:
    probe = f"{code}; import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {prefixes!r} or m in {prefixes!r}))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return eval(out.stdout.strip())


def test_the_engine_build_imports_no_ray():
    code = ("import pickle; from ttdist.runtime.replica_setup import ReplicaSetup, build_core;"
            "from ttdist.runtime.request_checks import ModelCard;"
            "pickle.loads(pickle.dumps((build_core, ReplicaSetup('r', '1x1', 'sim', ModelCard('m', 100, 64)))))")
    assert imported(code, ("ray",)) == []


def test_the_replica_actor_takes_its_weight_source_without_the_weights_loader():
    code = ("import pickle, ttdist.runtime.replica; from ttdist.runtime.remote_shards import WeightSource;"
            "pickle.loads(pickle.dumps(WeightSource(entry='/cache/entry', precision='float32')))")
    assert imported(code, ("ml_dtypes", "torch", "ttdist.model.weights")) == []
