"""Checks a cluster config against this machine before anything starts (no Ray, no chips opened).

``preflight(config, local=...)`` raises ``PreflightError`` with one line that names the fix for:

* ``backend: ttnn`` where the ``ttnn`` package cannot be imported: ttnn 0.81.1 has wheels for
  Python 3.10 and 3.12 only, so a Python 3.11 ``.venv`` never has it (``make install-ttnn``
  builds ``.venv-ttnn``); an ``emulate`` group runs on emulated chips (``ttdist.mesh.ttnn_emu``)
  and needs neither the package nor chips;
* a precision the ttnn backend cannot run (``check_ttnn_precision``): each tensor group in a
  format its ttnn ops accept (a float32 KV cache is held in bf16, the nearest format SDPA reads);
* ``--model smollm2`` not yet materialized where transformers is missing (the ttnn environment);
* a checkpoint whose heads the ttnn backend cannot lay out: ``head_dim`` not a multiple of a
  tile (32), more query heads per chip than one decode tile holds (32), a page size that is
  not a multiple of 32 (the checkpoint's own config errors surface here too);
* on a local cluster (``local``: the replicas run on this host), a ttnn mesh with more chips
  than this host shows (``TT_VISIBLE_DEVICES`` per replica where the group lists devices).
  The count comes from a short child process (``ttnn.get_num_devices()``), so this process
  never binds the chips the replicas are about to open.

The replica repeats the chip check when it opens its mesh (``ttdist.mesh.ttnn.device.check_chips``), which
covers multi-host clusters, where only the node itself can count its chips.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from ttdist.mesh.precision import GROUPS, DType, Precision
from ttdist.mesh.spec import parse_mesh, too_few_chips
from ttdist.runtime.config import ClusterConfig, ModelConfig

TILE = 32                  # ttnn tiles are 32x32
MAX_DECODE_HEADS = 32      # query heads per chip in one decode step: one tile of rows
PROBE_TIMEOUT_S = 60.0
INSTALL_HINT = ("run `make install-ttnn` and start .venv-ttnn/bin/ttdist (see docs/hardware.md), or add --emulate "
                "to run on emulated chips")


class PreflightError(ValueError):
    """The config cannot work on this machine; the message names the fix."""


def preflight(config: ClusterConfig, *, local: bool) -> None:
    """Every served model's ttnn groups (see the module's list)."""
    for model in config.served:
        _preflight_model(config, model, local)


def _preflight_model(config: ClusterConfig, model: ModelConfig, local: bool) -> None:
    groups = [g for g in model.groups if g.backend == "ttnn"]
    if not groups or config.engine != "model":
        return
    if any(not g.emulate for g in groups):
        check_ttnn_installed()
    check_ttnn_precision(Precision.parse(model.precision_of("ttnn")))
    model_config = _model_config(model.model)
    for group in groups:
        if model_config is not None:
            check_ttnn_layout(model_config, group.mesh, config.page_size, model.model)
    if local:
        for group in (g for g in groups if not g.emulate):
            for devices in group.devices or ((),):
                check_local_chips(group.mesh, devices)


_FLOATS = (DType.float32, DType.bfloat16, DType.bfloat8_b, DType.bfloat4_b)
# The formats each tensor group may take on the ttnn backend (what its ttnn ops accept): the
# embedding table and the norm weights are read by ops that take bf16 or float32 only
# (``ttnn.embedding``, ``rms_norm``); a float32 KV cache is allocated in bf16 (SDPA reads K and V
# in bf16 or block floats only), every matmul weight in any float format.
TTNN_FORMATS = {"embedding": (DType.float32, DType.bfloat16), "norms": (DType.float32, DType.bfloat16)}


def check_ttnn_precision(precision: Precision) -> None:
    """Every tensor group of ``precision`` in a format the ttnn backend's ops accept."""
    for group in GROUPS:
        dtype, allowed = getattr(precision, group), TTNN_FORMATS.get(group, _FLOATS)
        if dtype not in allowed:
            raise PreflightError(
                f"precision {precision.name}: ttnn cannot run the {group} group in {dtype.value} (it takes "
                f"{', '.join(d.value for d in allowed)}): choose another --dtype (accuracy, performance, bfloat16)")


def ttnn_installed() -> bool:
    """Whether ``import ttnn`` finds the package (found, not imported; a bare ``ttnn/`` folder is not it)."""
    spec = importlib.util.find_spec("ttnn")
    return spec is not None and spec.origin is not None


def check_ttnn_installed() -> None:
    if ttnn_installed():
        return
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    why = f"Python {version} has no ttnn wheel (ttnn 0.81.1 ships cp310/cp312 only)" \
        if sys.version_info[:2] not in ((3, 10), (3, 12)) else "the ttnn package is not installed here"
    raise PreflightError(f"--backend ttnn needs the ttnn package, and {why}: {INSTALL_HINT}")


def _model_config(model: str):
    from ttdist.model.config import CheckpointError, LlamaConfig

    path = Path(model).expanduser()
    if model == "smollm2" and not path.exists():
        from ttdist.model.smollm2 import default_dir

        path = default_dir()
        if not (path / "config.json").is_file():
            if importlib.util.find_spec("transformers") is None:
                raise PreflightError(
                    f"--model smollm2 is built once from its GGUF with transformers, which this environment lacks: run "
                    f"`.venv/bin/ttdist convert smollm2` in the main environment (it writes {path}), or pass --model DIR")
            return None   # the coordinator materializes it
    try:
        return LlamaConfig.from_dir(path)
    except CheckpointError as err:
        raise PreflightError(str(err)) from None


def check_ttnn_layout(model_config, mesh: str, page_size: int, model: str = "the checkpoint") -> None:
    """The ttnn backend's limits on how the layout places heads on ``mesh``."""
    from ttdist.model.layout import Layout

    spec = parse_mesh(mesh)
    c = model_config
    if c.head_dim % TILE:
        raise PreflightError(
            f"{model}: head_dim {c.head_dim} is not a multiple of {TILE}, so the ttnn backend cannot lay out its "
            f"heads (ttnn head ops work on whole tiles): serve it with --backend sim")
    layout = Layout(c, spec)
    if layout.n_q_local > MAX_DECODE_HEADS:
        raise PreflightError(
            f"{model}: {layout.n_q_local} query heads per chip on mesh {spec.name} ({spec.shape_str}); a ttnn decode "
            f"step holds at most {MAX_DECODE_HEADS}: use a mesh with more chips")
    if page_size % TILE:
        raise PreflightError(f"page_size {page_size} must be a multiple of {TILE} on the ttnn backend")


def check_local_chips(mesh: str, devices: tuple[int, ...] = ()) -> None:
    spec = parse_mesh(mesh)
    env = dict(os.environ)
    if devices:
        env["TT_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    have = count_chips(env)
    if have is not None and have < spec.num_chips:
        raise PreflightError(too_few_chips(spec, have, env.get("TT_VISIBLE_DEVICES")))


def count_chips(env: dict) -> int | None:
    """Chips ttnn sees with ``env``, counted in a child process; None where it cannot tell."""
    code = "import json, ttnn; print(json.dumps(ttnn.get_num_devices()))"
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return None
    try:
        return int(json.loads(lines[-1]))
    except (ValueError, TypeError):
        return None
