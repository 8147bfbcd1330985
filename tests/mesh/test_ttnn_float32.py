"""Precision as ttnn runs it: ``float32`` on the ttnn backend is float32 wherever ttnn takes it and
bf16 where it must (the KV cache: SDPA reads K and V in bf16 or block floats only), so prefill and
decode run on emulated chips and match the float32 simulator; a precision ttnn cannot run at all
is a preflight error naming the tensor group, never a crash in a replica."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh import ttnn_emu
from ttdist.mesh.precision import PRESETS, DType, Precision
from ttdist.runtime.preflight import PreflightError, check_ttnn_precision

from tests.support.model_checks import tiny_random_weights


def _weights(spec):
    return tiny_random_weights(spec, DType.float32, seed=1)


def _generate(runner) -> tuple[list[np.ndarray], list[list[int]]]:
    """Prefill logits of three users (one over a page), then four greedy decode steps."""
    from ttdist.engine.runner import DecodeInput, SamplingSpec

    tables = [[0, 1], [2, 3], [4, 5]]
    prompts = [list(range(1, 41)), [7, 8, 9], list(range(50, 70))]
    logits = [np.asarray(runner.prefill_logits(p, 0, t)) for p, t in zip(prompts, tables)]
    positions, last, ids = [len(p) for p in prompts], [int(np.argmax(x)) for x in logits], []
    for _ in range(4):
        last = list(runner.decode(DecodeInput(last, positions, tables, [SamplingSpec()] * 3, seq_ids=["a", "b", "c"])))
        ids.append(last)
        positions = [p + 1 for p in positions]
    return logits, ids


@pytest.mark.parametrize("mesh", ["n300", "tg"])
def test_float32_on_ttnn_runs_and_matches_the_float32_simulator(mesh):
    pytest.importorskip("torch", reason="the simulator it is compared with runs on torch")
    from ttdist.mesh import parse_mesh
    from ttdist.model.runner import MeshModelRunner

    spec = parse_mesh(mesh)
    weights = _weights(spec)
    assert weights.precision.kv_cache is DType.float32
    options = dict(page_size=32, num_pages=8, max_batch=4)
    sim_logits, sim_ids = _generate(MeshModelRunner(weights, backend="sim", **options))
    with ttnn_emu.installed():
        runner = MeshModelRunner(weights, backend="ttnn", trace_decode=False, **options)
        assert runner.backend.activation_dtype is DType.float32
        emu_logits, emu_ids = _generate(runner)
        assert {layer.attention.cache.k.dtype for layer in runner.model.layers} == {DType.bfloat16}   # held in bf16
        runner.close()
    for sim, emu in zip(sim_logits, emu_logits):
        assert np.corrcoef(sim.ravel(), emu.ravel())[0, 1] > 0.9999
    assert emu_ids == sim_ids


@pytest.mark.parametrize("precision, activations", [("accuracy", DType.bfloat16), ("performance", DType.bfloat16),
                                                    ("bfloat16", DType.bfloat16), ("bfloat8_b", DType.bfloat16),
                                                    ("float32", DType.float32)])
def test_activations_are_float32_only_for_float32_weights(precision, activations):
    assert Precision.parse(precision).activations is activations
    assert Precision(wqkv=DType.float32, wo=DType.float32, ff1_ff3=DType.float32, ff2=DType.float32).activations is DType.bfloat16


@pytest.mark.parametrize("precision", [*PRESETS, "float32", "bfloat16", "bfloat8_b", "bfloat4_b"])
def test_every_precision_the_cli_takes_runs_on_ttnn(precision):
    check_ttnn_precision(Precision.parse(precision))


@pytest.mark.parametrize("group, dtype", [("embedding", DType.bfloat8_b), ("norms", DType.bfloat4_b)])
def test_a_precision_ttnn_cannot_run_is_named_before_start(group, dtype):
    bad = Precision(**{group: dtype}, name="odd")
    with pytest.raises(PreflightError, match=f"precision odd: ttnn cannot run the {group} group in {dtype.value}"):
        check_ttnn_precision(bad)
