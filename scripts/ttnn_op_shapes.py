"""Record what every ttnn call of the ttnn backend returns while it runs a tiny Llama (prefill,
a chunk at a later position, decode, sampling; once in the hardware formats, once with
``--dtype float32``): op name and, per output, logical shape, padded shape, dtype, layout,
memory layout and buffer type.

The calls are every ``ttnn.<op>(...)`` the backend's source (ttdist/mesh/ttnn) makes, each
wrapped in the ttnn module (the outermost call only: ttnn's own Python may call ops inside);
one the module lacks (an op the emulator does not model) stops the recording, naming it.
Run it once on the real ttnn (mocked chips, .venv-ttnn) and once on the emulator, and compare:

    TT_METAL_MOCK_CLUSTER_DESC_PATH=../shared/ttnn-mock/cluster/wormhole_N300.yaml \\
        .venv-ttnn/bin/python scripts/ttnn_op_shapes.py record real n300 real.json
    .venv/bin/python scripts/ttnn_op_shapes.py record emu n300 emu.json
    .venv/bin/python scripts/ttnn_op_shapes.py compare real.json emu.json

The ttnn lane does exactly this on each system it mocks (tests/ttnn/test_emulator_shapes.py).
``tests/mesh/data/ttnn_op_shapes_<system>.json`` are such records from ttnn 0.81.1 on mock
chips (N300 on wormhole_N300.yaml, T3000 on t3k_cluster_desc.yaml, Galaxy on
6u_cluster_desc.yaml); the main lane holds the emulator to them.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKEND = Path(__file__).resolve().parents[1] / "ttdist" / "mesh" / "ttnn"
NAMESPACES = ("experimental", "transformer")


def called_names() -> list[str]:
    """Every ``ttnn.<op>(...)`` the ttnn backend's source calls (``experimental.`` / ``transformer.`` kept)."""
    found = set()
    for source in BACKEND.glob("*.py"):
        found |= set(re.findall(r"\bttnn\.((?:experimental\.|transformer\.)?[a-z][a-z_0-9]*)\(", source.read_text()))
    return sorted(found)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32)


def _meta(t) -> list:
    mc = t.memory_config()
    return [list(t.shape), list(t.padded_shape), str(t.dtype), str(t.layout), str(mc.memory_layout), str(mc.buffer_type)]


def _wrap(log: list, ns, name: str, label: str, depth: list) -> None:
    """Record each outermost call of ``ns.name`` (ttnn's own Python may call other wrapped ops inside)."""
    f = getattr(ns, name)

    @functools.wraps(f)
    def recorded(*args, **kwargs):
        depth[0] += 1
        try:
            out = f(*args, **kwargs)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            outs = out if isinstance(out, (tuple, list)) else [out]
            log.append([label, [_meta(o) for o in outs if hasattr(o, "memory_config")]])
        return out

    setattr(ns, name, recorded)


def wrap_calls(ttnn, log: list) -> None:
    """Wrap every call the backend makes; one the module lacks is an error naming it (on the
    emulator: an op it does not model)."""
    depth = [0]
    missing = []
    for label in called_names():
        prefix, _, name = label.rpartition(".")
        ns = getattr(ttnn, prefix) if prefix else ttnn
        try:
            getattr(ns, name)
        except AttributeError:
            missing.append(f"ttnn.{label}")
            continue
        _wrap(log, ns, name, label, depth)
    if missing:
        which = "the ttnn emulator (ttdist/mesh/ttnn_emu)" if getattr(ttnn, "EMULATED", False) else "this ttnn"
        raise SystemExit(f"{which} has no {', '.join(missing)}, which the ttnn backend (ttdist/mesh/ttnn) calls")


def record(mode: str, system: str, path: str) -> None:
    if mode == "emu":
        from ttdist.mesh import ttnn_emu

        ttnn_emu.install()
    import ttnn

    from ttdist.mesh import REPLICATED, SamplingBatch, make_backend, parse_mesh
    from ttdist.mesh.precision import DType
    from ttdist.mesh.sampling import device_params
    from ttdist.mesh.ttnn.device import open_device
    from ttdist.model.config import LlamaConfig
    from ttdist.model.llama import CacheConfig, LlamaModel
    from ttdist.model.weights import expected_shapes, prepare

    log: list = []
    wrap_calls(ttnn, log)
    spec = parse_mesh(system)
    device = open_device(spec)
    config = LlamaConfig(**TINY)
    rng = np.random.default_rng(0)
    hf = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in expected_shapes(config).items()}
    # the hardware formats (bf16 activations, block-float weights and cache), then --dtype float32
    # (float32 activations, bf16 only where ttnn requires it: SDPA inputs, the cache, the embedding table)
    for dtype in (DType.bfloat8_b, DType.float32):
        weights = prepare(config, hf, spec, dtype)
        backend = make_backend(spec, "ttnn", device=device, activation_dtype=weights.precision.activations)
        model = LlamaModel(backend, weights, CacheConfig(num_pages=8, page_size=32, dtype=dtype))
        model.prefill_forward(list(range(1, 41)), 0, [3, 1])
        model.prefill_forward(list(range(5)), 64, [3, 1, 0])
        logits = model.decode_forward([7, 8, 9], [69, 12, 40], np.array([[3, 1, 0], [2, -1, -1], [4, 5, -1]]))
        backend.read_ids(model.sample(logits, backend.input_tensor(device_params(SamplingBatch.greedy(3)), REPLICATED, name="sampling")))
    Path(path).write_text(json.dumps({"system": system, "ttnn": mode, "calls": log}, separators=(",", ":")))
    print(f"{len(log)} calls recorded in {path}")


def compare(expected: str, got: str) -> int:
    """The calls that differ (op sequence or any output's metadata); prints each; returns their count."""
    a, b = (json.loads(Path(p).read_text())["calls"] for p in (expected, got))
    bad = [f"call count {len(a)} != {len(b)}"] if len(a) != len(b) else []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            bad.append(f"call {i}: expected {x}\n         got {y}")
    print("\n".join(bad) or f"all {len(a)} calls agree")
    return len(bad)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "record":
        record(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(1 if compare(*sys.argv[2:]) else 0)
    else:
        sys.exit(__doc__)
