"""Meshes of Tenstorrent chips: topology, placements, precision, accounting, backends."""

from ttdist.mesh.accounting import CclLedger, DramLedger, DramOverflowError
from ttdist.mesh.backend import Backend, MeshError, PartialTensorError, SamplingBatch
from ttdist.mesh.placement import REPLICATED, Partial, Placements, Replicate, Shard
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import SYSTEMS, MeshSpec, MeshSpecError, Topology, parse_mesh

__all__ = [
    "Backend", "CclLedger", "DramLedger", "DramOverflowError", "DType", "MeshError", "MeshSpec",
    "MeshSpecError", "Partial", "PartialTensorError", "Placements", "REPLICATED", "Replicate",
    "SYSTEMS", "SamplingBatch", "Shard", "Topology", "make_backend", "parse_mesh",
]


def make_backend(spec: MeshSpec, kind: str = "sim", **options) -> Backend:
    """The backend named ``kind`` (``sim`` or ``ttnn``) on mesh ``spec``."""
    if kind == "sim":
        from ttdist.mesh.sim.backend import SimBackend

        return SimBackend(spec, **options)
    if kind == "ttnn":
        try:
            from ttdist.mesh.ttnn.backend import TtnnBackend
        except ModuleNotFoundError as err:
            if err.name != "ttnn" and not (err.name or "").startswith("ttnn."):
                raise
            raise MeshError(
                "the ttnn backend needs the ttnn package (Python 3.10 or 3.12): run `make install-ttnn` and use "
                f".venv-ttnn (see docs/hardware.md): {err}"
            ) from None
        return TtnnBackend(spec, **options)
    raise MeshError(f"unknown backend {kind!r}: use 'sim' or 'ttnn'")
