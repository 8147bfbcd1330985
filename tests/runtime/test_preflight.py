"""Bad input on the ttnn path is one line naming the fix, before anything starts.

Here (the main lane's Python 3.11) ttnn cannot be installed, so ``--backend ttnn`` must say so
and point at ``make install-ttnn``; the layout limits are checked as plain functions. The
ttnn lane (tests/ttnn/test_serve.py) runs the same checks where ttnn and mocked chips exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ttdist.model.config import LlamaConfig
from ttdist.runtime.config import ClusterConfig, ClusterConfigError, ReplicaGroup
from ttdist.runtime.preflight import PreflightError, check_ttnn_layout, preflight, ttnn_installed
from ttdist.runtime.cluster_file import parse_spec

ROOT = Path(__file__).resolve().parents[2]
NO_TTNN = not ttnn_installed()
LLAMA_70B = dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=1,
                 num_attention_heads=64, num_key_value_heads=8, head_dim=128)


def _config(**overrides) -> LlamaConfig:
    raw = {**dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32), **overrides}
    return LlamaConfig.from_dict(raw)


def _ttdist(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "TTDIST_CACHE": str(tmp)}
    return subprocess.run([sys.executable, "-c", "from ttdist.cli import main; raise SystemExit(main())", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=120)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from ttdist.model.testing import numpy_llama_checkpoint

    return numpy_llama_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=1)


@pytest.mark.skipif(not NO_TTNN, reason="ttnn is installed in this environment")
def test_serve_backend_ttnn_without_ttnn_is_one_line_naming_make_install_ttnn(checkpoint, tmp_path):
    proc = _ttdist("serve", "--backend", "ttnn", "--mesh", "n300", "--model", str(checkpoint), "--port", "0",
                   tmp=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    version = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    assert line.startswith("ttdist serve: error: --backend ttnn needs the ttnn package")
    assert "make install-ttnn" in line and ".venv-ttnn/bin/ttdist" in line
    if sys.version_info[:2] not in ((3, 10), (3, 12)):
        assert f"{version} has no ttnn wheel" in line


@pytest.mark.skipif(not NO_TTNN, reason="ttnn is installed in this environment")
def test_launch_of_a_ttnn_spec_without_ttnn_is_refused_the_same_way(checkpoint, tmp_path):
    spec = tmp_path / "tg.yaml"
    spec.write_text(f"model: {checkpoint}\nreplicas:\n  - count: 1\n    mesh: tg\n    backend: ttnn\n")
    proc = _ttdist("launch", str(spec), tmp=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "ttdist launch: error: --backend ttnn needs the ttnn package" in line and "make install-ttnn" in line


def test_the_sim_backend_skips_the_ttnn_checks(checkpoint):
    preflight(ClusterConfig(model=str(checkpoint), groups=(ReplicaGroup(mesh="tg", backend="sim"),)), local=True)


@pytest.mark.parametrize("mesh", ["n150", "n300", "t3k", "tg"])
def test_layouts_the_ttnn_backend_can_hold(mesh):
    check_ttnn_layout(_config(), mesh, 32)
    check_ttnn_layout(LlamaConfig.from_dict(LLAMA_70B), mesh if mesh != "n150" else "n300", 32)


def test_head_dim_off_the_tile_cannot_be_laid_out():
    with pytest.raises(PreflightError, match=r"head_dim 48 is not a multiple of 32.*--backend sim"):
        check_ttnn_layout(_config(hidden_size=96, num_attention_heads=2, num_key_value_heads=1, head_dim=48), "n300", 32)


def test_too_many_query_heads_per_chip_names_a_bigger_mesh():
    with pytest.raises(PreflightError, match=r"64 query heads per chip on mesh n150 .*at most 32: use a mesh with more chips"):
        check_ttnn_layout(LlamaConfig.from_dict(LLAMA_70B), "n150", 32)


def test_a_page_size_off_the_tile_is_refused():
    with pytest.raises(PreflightError, match="page_size 48 must be a multiple of 32"):
        check_ttnn_layout(_config(), "n300", 48)


def test_dispatch_core_is_a_checked_group_setting():
    spec = parse_spec({"model": "x", "replicas": [{"mesh": "tg", "backend": "ttnn", "dispatch_core": "worker_col"}]})
    assert spec.config.groups[0].dispatch_core == "worker_col"
    with pytest.raises(ClusterConfigError, match=r"replicas\[0\]\.dispatch_core must be one of auto, worker_row"):
        ClusterConfig(groups=(ReplicaGroup(backend="ttnn", dispatch_core="sideways"),)).check()


@pytest.mark.skipif(not NO_TTNN, reason="ttnn is installed in this environment")
def test_the_ttnn_backend_without_ttnn_is_a_mesh_error_naming_the_install():
    code = "from ttdist.mesh import make_backend, parse_mesh; make_backend(parse_mesh('n300'), 'ttnn')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ttdist.mesh.errors.MeshError: the ttnn backend needs the ttnn package")
    assert "make install-ttnn" in last and "No module named 'ttnn'" in last
