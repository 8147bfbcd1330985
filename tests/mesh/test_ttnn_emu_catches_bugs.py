"""What the emulated chips prove beyond op acceptance: bugs the mocked chips cannot see (they
return zeros) change the values or fail: an input made anew instead of rewritten before a replay,
tile padding summed as data, an idle slot's unwritten rows summed, an all-gather along the wrong
dim. (Seeded sampling draw for draw against the simulator: test_ttnn_emu_sampling.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh import ttnn_emu

pytest.importorskip("torch", reason="the simulator it is compared with runs on torch")

from ttdist.engine.runner import DecodeInput, SamplingSpec  # noqa: E402
from ttdist.mesh import parse_mesh  # noqa: E402
from ttdist.mesh.precision import DType  # noqa: E402
from ttdist.model import llama, user_groups  # noqa: E402
from ttdist.model.config import LlamaConfig  # noqa: E402
from ttdist.model.runner import MeshModelRunner  # noqa: E402
from ttdist.model.weights import expected_shapes, prepare  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
TABLES = [[0, 1], [2], [17]]  # on a Galaxy (8 pages per group) users of groups 0, 0 and 2
PROMPTS = [list(range(1, 41)), list(range(3, 20)), list(range(50, 75))]


@pytest.fixture
def emulated():
    with ttnn_emu.installed() as ttnn:
        yield ttnn


@pytest.fixture
def nan_garbage(monkeypatch, emulated):
    monkeypatch.setattr(ttnn_emu.settings, "poison", "nan")
    return emulated


def _weights(mesh: str):
    config = LlamaConfig(**TINY)
    rng = np.random.default_rng(0)
    hf = {k: ((1 + 0.1 * rng.standard_normal(s)) if "norm" in k else rng.standard_normal(s) * 0.05).astype(np.float32)
          for k, s in expected_shapes(config).items()}
    return prepare(config, hf, parse_mesh(mesh), DType.bfloat16)


def _runner(weights, backend: str, **kw) -> MeshModelRunner:
    return MeshModelRunner(weights, backend=backend, page_size=32, num_pages=32, max_batch=8, **kw)


def _decode(runner, steps: int) -> list[list[int]]:
    """The three users prefilled, then ``steps`` greedy decode steps feeding back their own tokens."""
    last = [runner.prefill_logits(p, 0, t)[0].argmax() for p, t in zip(PROMPTS, TABLES)]
    out = []
    for step in range(steps):
        positions = [len(p) + step for p in PROMPTS]
        last = runner.decode(DecodeInput([int(t) for t in last], positions, TABLES, [SamplingSpec()] * 3, seq_ids=["a", "b", "c"]))
        out.append(last)
    runner.close()
    return out


def test_an_input_made_anew_before_a_replay_is_stale(emulated, monkeypatch):
    """The replay reads the buffers it recorded: an input re-created (not rewritten in place) is
    never seen, so the traced tokens part from the eager ones."""
    weights = _weights("n300")
    eager = _decode(_runner(weights, "ttnn", trace_decode=False), 6)
    assert _decode(_runner(weights, "ttnn", trace_decode=True), 6) == eager

    def recreate(self, inputs, host):
        for name, array in host.items():
            setattr(inputs, name, self.be.input_tensor(llama._on_device(name, array), getattr(inputs, name).placements,
                                                       name=f"input.{name}"))
            inputs.host[name] = array.copy()
        return len(host)

    monkeypatch.setattr(llama.LlamaModel, "write_inputs", recreate)
    assert _decode(_runner(weights, "ttnn", trace_decode=False), 6) == eager  # eager steps read the new tensors
    assert _decode(_runner(weights, "ttnn", trace_decode=True), 6) != eager


@pytest.mark.parametrize("bug", ["partial tile summed", "idle rows summed"])
def test_unwritten_rows_summed_by_the_group_selection_make_nan(nan_garbage, monkeypatch, bug):
    """The Galaxy's user-group selection sums over every row of the decode batch: without whole
    tiles (a batch of 8 rows leaves 24 rows of tile padding) or with idle slots left at position -1
    (paged SDPA writes nothing for them), garbage reaches every user."""
    weights = _weights("tg")
    if bug == "partial tile summed":
        monkeypatch.setattr(user_groups, "decode_rows", lambda slots, count: slots)
        monkeypatch.setattr(llama, "decode_rows", lambda slots, count: slots)
    else:
        monkeypatch.setattr(llama, "_on_device", lambda name, array: array)
    runner = _runner(weights, "ttnn")
    for p, t in zip(PROMPTS, TABLES):
        runner.prefill_logits(p, 0, t)
    logits = runner.decode_logits([7, 8, 9], [len(p) for p in PROMPTS], TABLES)
    assert np.isnan(logits).all()


def test_an_all_gather_along_the_wrong_dim_is_caught(emulated, monkeypatch):
    """The residual gathered along the rows instead of the width: an error or other logits."""
    from ttdist.mesh.ttnn import backend

    weights = _weights("t3k")
    want = _runner(weights, "sim").prefill_logits(PROMPTS[0], 0, TABLES[0])
    gather, wrong = backend.ttnn.all_gather, []

    def along_rows(x, dim, **kw):
        wrong.append(dim)
        return gather(x, 2 if dim == 3 else dim, **kw)

    monkeypatch.setattr(backend.ttnn, "all_gather", along_rows)
    try:
        got = _runner(weights, "ttnn").prefill_logits(PROMPTS[0], 0, TABLES[0])
    except Exception as error:  # noqa: BLE001 - ttnn's validation or the backend's shape checks: either catches it
        assert wrong and ("all_gather" in str(error) or "shape" in str(error).lower()), error
    else:
        assert 3 in wrong and (got.shape != want.shape or not np.allclose(got, want, rtol=0.05, atol=0.05))
