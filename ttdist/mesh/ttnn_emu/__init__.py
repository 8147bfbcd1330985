"""The part of the ``ttnn`` API ttdist's ttnn backend uses, on emulated chips (numpy + ml_dtypes).

Each emulated chip holds its own data, with ttnn's op semantics (the golden functions and
docs shipped in the ttnn 0.81.1 wheel, named in each op's docstring), ttnn's output shapes,
dtypes, layouts and memory configs, data formats rounded as on Wormhole, garbage where chips
hold garbage (tile padding an op wrote, buffers nobody wrote, outputs of a trace not yet
replayed), errors where ttnn's validation fails, and traces that replay against the buffers
they recorded. Nothing here imports torch or ttnn, so it runs in both environments.

    from ttdist.mesh import ttnn_emu
    ttnn_emu.install()                  # ``import ttnn`` now gives the emulator
    import ttnn
    ttnn.set_fabric_config(ttnn.FabricConfig.FABRIC_1D)
    mesh = ttnn.open_mesh_device(ttnn.MeshShape(1, 8), trace_region_size=1 << 20)   # a T3000

or ``with ttnn_emu.installed(): ...``. ``install`` also drops already imported
``ttdist.mesh.ttnn`` modules so they import again against the emulator. Settings:
``ttnn_emu.settings.poison`` (what garbage reads as: a float, default ``2**20``, or
``"nan"``) and ``settings.num_devices`` (chips the emulated host has, default 32).

Modules: ``types`` (value types and configs), ``storage`` (formats, padding, poison),
``tensor``, ``device`` (meshes, allocation, program cache, traces), ``mapping`` (mesh
mappers), ``kernel`` (what ops are made of) and the ops: ``ops_eltwise``, ``ops_data``,
``ops_matmul``, ``ops_norm``, ``ops_ccl``, ``ops_heads``, ``ops_sdpa``; ``namespace`` builds
the ``ttnn`` modules.
"""

from __future__ import annotations

import contextlib
import sys

from ttdist.mesh.ttnn_emu.storage import settings

_SAVED: dict = {}
_MODULES = ("ttnn", "ttnn.experimental", "ttnn.transformer")


def _drop_backend_modules() -> None:
    for name in [m for m in sys.modules if m == "ttdist.mesh.ttnn" or m.startswith("ttdist.mesh.ttnn.")]:
        del sys.modules[name]


def install() -> None:
    """Make ``import ttnn`` (and ``ttnn.experimental``, ``ttnn.transformer``) resolve to the emulator."""
    from ttdist.mesh.ttnn_emu import namespace

    if not _SAVED:
        _SAVED.update({name: sys.modules.get(name) for name in _MODULES})
    sys.modules.update(namespace.build())
    _drop_backend_modules()


def uninstall() -> None:
    """Restore whatever ``ttnn`` was before ``install`` (nothing, or the real package)."""
    for name, previous in _SAVED.items():
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
    _SAVED.clear()
    _drop_backend_modules()


def is_installed() -> bool:
    return getattr(sys.modules.get("ttnn"), "EMULATED", False)


@contextlib.contextmanager
def installed():
    """``install()`` for the duration of a ``with`` block."""
    install()
    try:
        yield sys.modules["ttnn"]
    finally:
        uninstall()


__all__ = ["install", "installed", "is_installed", "settings", "uninstall"]
