"""Penalties, biases and min_p on the mesh: the simulator equals the numpy reference on every mesh
shape, the ttnn backend on emulated chips equals the simulator (greedy and seeded draws, counts
updated in place on the device), and the reference itself equals independent definitions
(Hugging Face's repetition penalty, OpenAI's presence / frequency penalties, min_p)."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh import REPLICATED, SamplingBatch, Shard, make_backend, parse_mesh, ttnn_emu
from ttdist.mesh import penalties as pen
from ttdist.mesh.placement import with_axis
from ttdist.mesh.precision import DType
from ttdist.mesh.sampling import MASK, candidates, device_params, draw

B = 6
SAMPLING = SamplingBatch(temperature=np.array([0.0, 0.8, 1.0, 0.0, 1.2, 0.7]), top_k=np.array([0, 0, 20, 0, 0, 5]),
                         top_p=np.array([1.0, 0.9, 1.0, 1.0, 1.0, 1.0]), seed=np.array([-1, 1, 2, -1, 3, 4]),
                         step=np.zeros(B, dtype=np.int64))


def _state(width: int, vocab: int, rng) -> dict:
    """Random but meaningful penalty inputs over ``width`` columns (the padded vocab)."""
    prompt = pen.token_rows(B, width, [list(rng.integers(0, vocab, 12)) for _ in range(B)], count=False)
    counts = pen.token_rows(B, width, [list(rng.integers(0, vocab, 9)) for _ in range(B)], count=True)
    bias = np.zeros((B, width), np.float32)
    bias[1, :5] = [100, -100, 3.5, -2.25, 7]
    bias[4, rng.integers(0, vocab, 20)] = 5.0
    ban = np.zeros((B, width), np.float32)
    ban[2, :vocab:7] = 1.0
    params = pen.penalty_params(repetition=[1.0, 1.3, 0.7, 2.5, 1.0, 1.1], presence=[0, 0.5, -1.0, 0, 2.0, 0.3],
                                frequency=[0, 0.4, 0, 1.5, -0.5, 0.2], banned=[0, 0, 1, 0, 0, 1],
                                min_p=[0, 0.05, 0.2, 0, 0.5, 0.1])
    return {"counts": counts, "prompt": prompt, "bias": bias, "ban": ban, "params": params}


def _run(be, logits, vocab, state, steps: int, dtype: DType = DType.float32):
    """``steps`` decode-like draws on the mesh: penalize, sample with min_p, count the ids on the device."""
    axis = 1 if be.spec.rows == 1 else 0
    sharded = with_axis(REPLICATED, axis, Shard(1))
    tensors = pen.PenaltyState(**{name: be.input_tensor(state[name], sharded if name in pen.STATE else REPLICATED, name=name)
                                  for name in (*pen.STATE, "params")})
    placed = be.from_host(logits, sharded, dtype=dtype, name="logits")
    out = []
    for step in range(steps):
        params = be.input_tensor(device_params(SamplingBatch(*(getattr(SAMPLING, f) for f in ("temperature", "top_k", "top_p", "seed")),
                                                             np.full(B, step))), REPLICATED, name="sampling")
        ids = be.sample(be.penalize(placed, tensors), vocab, params, axis, tensors.params)
        be.count_tokens(tensors, ids, axis)
        out.append(be.read_ids(ids))
    return np.stack(out), be.to_host(tensors.counts), be.spec.shape[axis]


def _reference(logits, vocab, state, steps: int, shards: int):
    counts = state["counts"].copy()
    out = []
    for step in range(steps):
        x = pen.penalize(logits, counts, state["prompt"], state["bias"], state["ban"], state["params"])
        values, ids = candidates(x, vocab, shards)
        params = device_params(SamplingBatch(SAMPLING.temperature, SAMPLING.top_k, SAMPLING.top_p, SAMPLING.seed, np.full(B, step)))
        token = draw(values, ids, params, state["params"][:, pen.MIN_P])
        counts = pen.count_tokens(counts, token)
        out.append(token)
    return np.stack(out), counts


@pytest.mark.parametrize("mesh", ["1x1", "1x2", "1x8", "8x4"])
def test_sim_equals_the_reference_and_counts_on_the_device(mesh):
    be = make_backend(parse_mesh(mesh), "sim")
    n = be.spec.shape[1 if be.spec.rows == 1 else 0]
    width, vocab = 64 * n, 64 * n - 5
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((B, width)) * 3).astype(np.float32)
    state = _state(width, vocab, rng)
    got, counts, shards = _run(be, logits, vocab, state, steps=5)
    want, want_counts = _reference(logits, vocab, state, 5, shards)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(counts, want_counts)
    assert got.max() < vocab
    assert np.all(np.isin(got[:, 2], np.flatnonzero(state["ban"][2] == 0)))  # banned ids never drawn
    assert np.all(got[:, 1] == 0)  # a +100 bias wins every draw


def test_neutral_rows_leave_logits_bit_for_bit():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((4, 96)) * 5).astype(np.float32)
    seen = pen.token_rows(4, 96, [[1, 2, 3]] * 4, count=True)
    out = pen.penalize(logits, seen, seen, np.zeros_like(logits), np.zeros_like(logits), pen.neutral_params(4))
    np.testing.assert_array_equal(out, logits)


def test_reference_equals_the_published_definitions():
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((1, 40)) * 4).astype(np.float32)
    prompt_ids, output_ids = [3, 5, 5, 9], [5, 11, 11, 11, 20]
    r, presence, frequency = 1.3, 0.6, 0.25
    counts = pen.token_rows(1, 40, [output_ids], count=True)
    prompt = pen.token_rows(1, 40, [prompt_ids], count=False)
    bias = np.zeros((1, 40), np.float32)
    bias[0, 7] = -3.0
    got = pen.penalize(logits, counts, prompt, bias, np.zeros_like(bias), pen.penalty_params([r], [presence], [frequency], [0], [0]))
    want = logits[0].astype(np.float64) + bias[0]
    for t in set(prompt_ids + output_ids):  # transformers' RepetitionPenaltyLogitsProcessor
        want[t] = want[t] * r if want[t] < 0 else want[t] / r
    for t in set(output_ids):  # OpenAI: mu[j] - c[j] * alpha_frequency - float(c[j] > 0) * alpha_presence
        want[t] -= output_ids.count(t) * frequency + presence
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6)


def test_min_p_drops_candidates_below_its_share_of_the_top():
    logits = np.log(np.array([[0.5, 0.3, 0.1, 0.06, 0.04] + [1e-6] * 27], np.float32))
    values, ids = candidates(logits, 32, 1)
    batch = SamplingBatch(np.ones(1), np.zeros(1, np.int64), np.ones(1), np.array([0]), np.zeros(1, np.int64))
    drawn = set()
    for step in range(200):
        batch = SamplingBatch(batch.temperature, batch.top_k, batch.top_p, batch.seed, np.array([step]))
        drawn.add(int(draw(values, ids, device_params(batch), np.array([0.25]))[0]))
    assert drawn == {0, 1}  # 0.1 / 0.5 < 0.25: only the first two remain


@pytest.mark.parametrize("mesh", ["n300", "t3k", "tg"])
def test_ttnn_on_emulated_chips_equals_the_sim(mesh):
    pytest.importorskip("torch")
    spec = parse_mesh(mesh)
    n = spec.shape[1 if spec.rows == 1 else 0]
    width, vocab = 64 * n, 64 * n - 5
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((B, width)) * 3).astype(np.float32)
    state = _state(width, vocab, rng)
    sim = _run(make_backend(spec, "sim"), logits, vocab, state, 4, DType.bfloat16)
    with ttnn_emu.installed():
        from ttdist.mesh.ttnn.device import open_device

        emu = _run(make_backend(spec, "ttnn", device=open_device(spec)), logits, vocab, state, 4, DType.bfloat16)
    np.testing.assert_array_equal(emu[0], sim[0])
    np.testing.assert_array_equal(emu[1], sim[1])


def test_mask_is_what_a_ban_adds():
    assert pen.penalty_params([1.0], [0], [0], [1], [0])[0, pen.BAN_SCALE] == np.float32(MASK)
