"""Opening meshes on the mock cluster: each system on its own descriptor, the dispatch setting,
the core grid taken from the device, and a mesh the system lacks refused with the fix named."""

from __future__ import annotations

import os

import pytest

# ``ttnn._ttnn``, not ``ttnn``: without the wheel, tests/ttnn itself imports as a namespace package.
pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

import ttnn  # noqa: E402

from ttdist.mesh import MeshError, parse_mesh  # noqa: E402
from ttdist.mesh.ttnn.device import TtnnOptions, dispatch_config, open_device  # noqa: E402


def test_each_system_runs_on_its_own_descriptor(spec, descriptor):
    assert os.path.basename(os.environ["TT_METAL_MOCK_CLUSTER_DESC_PATH"]) == descriptor
    assert ttnn.get_num_devices() == spec.num_chips


def test_auto_dispatch_on_a_mock_cluster_is_a_worker_row(backend, mesh_device, system):
    auto = dispatch_config("auto")
    row = dispatch_config("worker_row")
    assert (auto.type, auto.axis) == (row.type, row.axis) == (ttnn.DispatchCoreType.WORKER, ttnn.DispatchCoreAxis.ROW)
    full = mesh_device.compute_with_storage_grid_size()
    # harvested N300 / T3000 chips give up a row to dispatch: the 8x7 grid the mock validates against
    if system in ("n300", "t3k"):
        assert (full.x, full.y) == (8, 7)
    assert (backend.grid.x, backend.grid.y) == (full.x, full.y)


def test_worker_grid_option_narrows_the_device_grid(spec, mesh_device):
    from ttdist.mesh import make_backend

    be = make_backend(spec, "ttnn", device=mesh_device, worker_grid=(4, 2))
    try:
        assert (be.grid.x, be.grid.y) == (4, 2)
    finally:
        be.close()


@pytest.mark.parametrize("bad", ["bogus", "worker", "worker_diagonal", "eth_"])
def test_an_unknown_dispatch_setting_is_a_mesh_error(bad):
    with pytest.raises(MeshError, match="dispatch_core"):
        TtnnOptions.from_kwargs({"dispatch_core": bad})


def test_a_mesh_the_system_lacks_is_refused_with_the_fix(spec, system):
    bigger = parse_mesh("tg" if spec.num_chips < 32 else "8x8")
    with pytest.raises(MeshError) as info:
        open_device(bigger)
    message = str(info.value)
    assert f"needs {bigger.num_chips} chips but this host has {spec.num_chips}" in message
    assert f"use --mesh {system}" in message and "\n" not in message
