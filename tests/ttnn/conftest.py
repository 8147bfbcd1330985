"""The ttnn lane: the real ttnn 0.81.1 wheel on mock chips (run by scripts/test-ttnn, Python 3.12).

One pytest process per system (``TTDIST_TTNN_SYSTEM`` = n300, t3k or tg): ttnn binds a
process to one cluster descriptor. Every system runs on the Galaxy (6u) descriptor, whose
unharvested chips give ttnn's op validator the 8x8 worker grid the device reports; the
N300 and T3000 descriptors mock chips with two harvested rows, where 0.81.1 reports an 8x8
grid but validates against 8x7 and rejects ordinary ops (embedding, matmul) that use the
eighth row. The 1x2 and 1x8 meshes keep their own topology and fabric (line, ring).
"""

from __future__ import annotations

import os

import pytest

CLUSTERS = os.environ.get("TTDIST_TTNN_MOCK_CLUSTERS", "")
SYSTEM = os.environ.get("TTDIST_TTNN_SYSTEM", "tg")
if CLUSTERS and "TT_METAL_MOCK_CLUSTER_DESC_PATH" not in os.environ:
    os.environ["TT_METAL_MOCK_CLUSTER_DESC_PATH"] = os.path.join(CLUSTERS, "6u_cluster_desc.yaml")

from ttdist.mesh import parse_mesh  # noqa: E402


@pytest.fixture(scope="session")
def spec():
    return parse_mesh(SYSTEM)


@pytest.fixture(scope="session")
def mesh_device(spec):
    import ttnn

    from ttdist.mesh.ttnn_mesh import open_device

    device = open_device(spec)
    yield device
    ttnn.close_mesh_device(device)


@pytest.fixture()
def backend(spec, mesh_device):
    from ttdist.mesh import make_backend

    be = make_backend(spec, "ttnn", device=mesh_device)
    yield be
    be.close()
