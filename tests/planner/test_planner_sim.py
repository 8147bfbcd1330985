"""The planner's bytes against the simulator running the real model on real simulated meshes.

Weights and KV cache per chip must equal the DRAM ledger after loading a tiny checkpoint; the
decode and prefill op lists must be the model's own calls, with the collective records the
ledger writes and the activation bytes each op reads and writes. When the model's ops change,
``ttdist/planner/step.py`` changes with them.
"""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh import sampling
from ttdist.mesh.backend import SamplingBatch
from ttdist.mesh.placement import REPLICATED
from ttdist.mesh.precision import DType
from ttdist.mesh.sim.backend import SimBackend
from ttdist.mesh.sim.tensor import SimTensor
from ttdist.model.layout import Layout
from ttdist.model.llama import CacheConfig, LlamaModel, ModelOptions
from ttdist.model.user_groups import decode_rows
from ttdist.model.weights import load_weights
from ttdist.planner.capacity import activation_bytes_per_chip, page_bytes_per_chip, weight_bytes_per_chip
from ttdist.planner.catalog import resolve_precision
from ttdist.planner.roofline import ccl_bytes_moved
from ttdist.planner.step import StepBuilder

MESHES = ["1x1", "1x2", "1x8", "2x4", "8x4"]
PAGES, PAGE = 6, 32
CCLS = ("all_gather", "reduce_scatter", "all_reduce")
NOT_OPS = ("from_host", "from_host_per_device", "input_tensor", "write_input", "read_ids", "to_host", "device_data")
RESIDENT = ("weights.", "kv_cache", "rope_table", "vocab_bias", "input.")  # not activations
OPTIONS = ModelOptions(max_positions=256, lm_head_chunk=64)  # several LM-head chunks, as a big vocabulary has


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints):
    # heads and widths that pad on the wider meshes, so padding is counted too
    return tiny_checkpoints(with_tokenizer=False, vocab_size=1000, num_attention_heads=6, num_key_value_heads=2,
                            head_dim=32, hidden_size=96, intermediate_size=160)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("weight-cache")


class Recording:
    """Forwards every call to the simulator and records the device ops with their activation bytes."""

    def __init__(self, backend: SimBackend):
        self.backend = backend
        self.calls: list[tuple[str, float]] = []

    def __getattr__(self, name):
        fn = getattr(self.backend, name)
        if not callable(fn) or name in NOT_OPS:
            return fn

        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            outs = out if isinstance(out, tuple) else (out,)
            flat = [t for a in (*args, *outs) for t in (a if isinstance(a, (list, tuple)) else (a,))]
            tensors = [t for t in flat if isinstance(t, SimTensor) and not t.name.startswith(RESIDENT)]
            self.calls.append((name, float(sum(np.prod(t.shape) * t.dtype.bytes_per_element for t in tensors))))
            return out
        return call


def load(ckpt, mesh, precision, cache_dir):
    weights = load_weights(ckpt, mesh=mesh, dtype=precision, cache_dir=cache_dir)
    rec = Recording(SimBackend(weights.mesh))
    model = LlamaModel(rec, weights, CacheConfig(PAGES, PAGE, weights.precision.kv_cache), OPTIONS)
    builder = StepBuilder(Layout(weights.config, weights.mesh), weights.precision, page_size=PAGE, options=OPTIONS)
    return weights, rec, model, builder


@pytest.mark.parametrize("mesh", MESHES)
def test_weights_and_kv_bytes_equal_the_dram_ledger(mesh, tiny, cache):
    for name in ("performance", "bfloat4_b"):
        weights, rec, model, _ = load(tiny, mesh, name, cache)
        ledger = rec.backend.dram.by_name
        layout = Layout(weights.config, weights.mesh)
        precision = resolve_precision(name)
        loaded = sum(v for k, v in ledger.items() if k.startswith("weights."))
        assert weight_bytes_per_chip(layout, precision) == loaded
        # the model holds one scratch page beyond the engine's pages
        assert page_bytes_per_chip(layout, precision, PAGE) * (PAGES + 1) == ledger["kv_cache"]


def _expected(ops, spec):
    names = [op.name for op in ops if not op.inside]
    acts = [op.act_bytes for op in ops if op.kind != "ccl"]
    ccls = [(op.name, op.axis, op.full_bytes, ccl_bytes_moved(op, spec)) for op in ops if op.kind == "ccl"]
    return names, acts, ccls


def _measured(rec, ccl_from):
    names = [name for name, _ in rec.calls]
    acts = [act for name, act in rec.calls if name not in CCLS]
    ccls = [(r.op, r.cluster_axis, r.full_bytes, r.bytes_moved) for r in rec.backend.ccl.records[ccl_from:]]
    return names, acts, ccls


@pytest.mark.parametrize("mesh", MESHES)
def test_decode_step_ops_are_the_models_own(mesh, tiny, cache):
    weights, rec, model, builder = load(tiny, mesh, "performance", cache)
    groups, per = model.groups.count, model.groups.pages
    if groups == 1:
        tables, rows, slots = [[0, 1], [2], [3, 4]], 3, None
    else:  # 2D: users in groups 0, 1 and 3, one slot each; the decode batch is whole tiles split over the groups
        rows = decode_rows(3, groups)
        slots = [g * rows // groups for g in (0, 1, 3)]
        tables = [[0, 1], [per], [3 * per, 3 * per + 1]]
    host = model.host_inputs([5, 6, 7], [33, 2, 40], tables, np.zeros((0, sampling.PARAMS), np.float32), rows, slots)
    inputs = model.place_inputs(host)
    start = len(rec.backend.ccl.records)
    rec.calls.clear()
    model.sample(model.decode_step(inputs), inputs.sampling)
    assert _measured(rec, start) == _expected(builder.decode(rows, 41), weights.mesh)


@pytest.mark.parametrize("mesh", ["1x1", "1x8", "8x4"])
def test_prefill_chunk_ops_are_the_models_own(mesh, tiny, cache):
    weights, rec, model, builder = load(tiny, mesh, "performance", cache)
    params = rec.backend.input_tensor(sampling.device_params(SamplingBatch.greedy(1)), REPLICATED, name="input.sampling")
    start = len(rec.backend.ccl.records)
    rec.calls.clear()
    model.sample(model.prefill_forward(list(range(1, 41)), 0, np.array([0, 1])), params)
    assert _measured(rec, start) == _expected(builder.prefill(40), weights.mesh)


@pytest.mark.parametrize("mesh", ["1x2", "2x4"])
def test_activation_estimate_covers_the_simulators_peak(mesh, tiny, cache):
    weights, rec, model, _ = load(tiny, mesh, "performance", cache)
    dram = rec.backend.dram
    held = dram.used_per_chip()
    for chip in dram.peak:
        dram.peak[chip] = dram.used[chip]
    model.prefill_forward(list(range(1, 41)), 0, np.array([0, 1]))
    peak = max(dram.peak.values()) - held
    layout = Layout(weights.config, weights.mesh)
    estimate = activation_bytes_per_chip(layout, weights.precision, batch=3, prefill_chunk=40)
    assert peak <= estimate <= 4 * peak
