"""The ttnn lane: the real ttnn 0.81.1 wheel on mock chips (run by scripts/test-ttnn, Python 3.12).

One pytest process per system (``TTDIST_TTNN_SYSTEM`` = n300, t3k or tg): ttnn binds a
process to one cluster descriptor, and each system runs on its own: N300 on
``wormhole_N300.yaml``, T3000 on ``t3k_cluster_desc.yaml``, Galaxy on ``6u_cluster_desc.yaml``.
Meshes open with the backend's ``auto`` dispatch choice, which on a mock cluster is a row of
worker cores: then the harvested N300 / T3000 chips report the 8x7 grid the mock validates
against (with ttnn's default it reports 8x8 and rejects ops on the eighth row).
"""

from __future__ import annotations

import os

import pytest

DESCRIPTORS = {"n300": "wormhole_N300.yaml", "t3k": "t3k_cluster_desc.yaml", "tg": "6u_cluster_desc.yaml"}
CLUSTERS = os.environ.get("TTDIST_TTNN_MOCK_CLUSTERS", "")
SYSTEM = os.environ.get("TTDIST_TTNN_SYSTEM", "tg")
if SYSTEM not in DESCRIPTORS:
    raise pytest.UsageError(f"TTDIST_TTNN_SYSTEM={SYSTEM!r}: the ttnn lane runs one of {', '.join(DESCRIPTORS)}")
if CLUSTERS and "TT_METAL_MOCK_CLUSTER_DESC_PATH" not in os.environ:
    # before ttnn is imported: it reads the descriptor once per process (and the serve tests' children inherit it)
    os.environ["TT_METAL_MOCK_CLUSTER_DESC_PATH"] = os.path.join(CLUSTERS, DESCRIPTORS[SYSTEM])

from ttdist.mesh import parse_mesh  # noqa: E402


@pytest.fixture(scope="session")
def system() -> str:
    """The system this run mocks: n300, t3k or tg."""
    return SYSTEM


@pytest.fixture(scope="session")
def descriptor() -> str:
    """The file name of the system's mock cluster descriptor."""
    return DESCRIPTORS[SYSTEM]


@pytest.fixture(scope="session")
def spec():
    return parse_mesh(SYSTEM)


@pytest.fixture(scope="session")
def mesh_device(spec):
    import ttnn

    from ttdist.mesh.ttnn.device import open_device

    device = open_device(spec)
    yield device
    ttnn.close_mesh_device(device)


@pytest.fixture()
def backend(spec, mesh_device):
    from ttdist.mesh import make_backend

    be = make_backend(spec, "ttnn", device=mesh_device)
    yield be
    be.close()
