"""Seeded sampling on emulated chips equals the simulator's and the numpy reference's, draw for
draw (``ttdist.mesh.sampling``: one algorithm in numpy, torch and ttnn ops).

The same vocab-sharded logits and per-user parameters go to ``sampling.candidates`` +
``sampling.draw`` on the host, to the simulator and to the ttnn backend on emulated N300, T3000
and Galaxy: temperature alone, top-k alone, top-p alone, their combinations and greedy users side
by side, several seeds, six steps, batches of 3, 8 and 32 users. The logits come two ways:
distinct bf16-exact values (what the LM head writes with bf16 activations) and float32 values
(``--dtype float32``), where the top-p threshold must be the float32 value of the last kept
candidate: one rounded to bf16 drops that candidate wherever its value rounds up, and with it
kept alone (top-k 1, greedy) every weight is zero and the token is id 0.
"""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh import ttnn_emu

pytest.importorskip("torch", reason="the simulator it is compared with runs on torch")

from ttdist.mesh import REPLICATED, SamplingBatch, parse_mesh  # noqa: E402
from ttdist.mesh import sampling as host_sampling  # noqa: E402
from ttdist.mesh.placement import Replicate, Shard  # noqa: E402
from ttdist.mesh.precision import DType  # noqa: E402
from ttdist.model.config import LlamaConfig  # noqa: E402
from ttdist.model.runner import MeshModelRunner  # noqa: E402
from ttdist.model.weights import expected_shapes, prepare  # noqa: E402

VOCAB = 500  # not a multiple of the chips' tiles: padded ids must never be drawn
TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=256)
# per user, cycled over the batch: temperature alone, top-k alone, top-p alone, combinations, greedy
TEMPERATURE = [0.7, 0.0, 1.3, 1.0, 1.0, 0.8, 0.6, 1.5, 1.1, 0.9]
TOP_K = [0, 0, 0, 5, 20, 3, 32, 12, 1, 0]
TOP_P = [1.0, 1.0, 0.9, 1.0, 0.8, 0.5, 0.95, 0.3, 1.0, 0.6]
STEPS = 6


@pytest.fixture(scope="module", params=["n300", "t3k", "tg"])
def runners(request):
    """The simulator and the emulated ttnn backend holding the same tiny Llama on one mesh."""
    spec = parse_mesh(request.param)
    config = LlamaConfig(**TINY)
    rng = np.random.default_rng(0)
    hf = {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in expected_shapes(config).items()}
    weights = prepare(config, hf, spec, DType.float32)
    with ttnn_emu.installed():
        made = {b: MeshModelRunner(weights, backend=b, page_size=32, num_pages=8, max_batch=4, trace_decode=False)
                for b in ("sim", "ttnn")}
        yield made
        for runner in made.values():
            runner.close()


def _logits(rng, batch: int, width: int, kind: str) -> np.ndarray:
    """``[batch, width]``: real ids flat to peaky per user, the padded columns zero (as the LM head leaves them)."""
    scale = np.array([0.5, 1, 2, 4, 8, 16], np.float32)[np.arange(batch) % 6, None]
    out = np.zeros((batch, width), np.float32)
    if kind == "bf16":  # a permutation of distinct bf16-exact values per user: no ties, whose order no top-k promises
        grid = np.arange(-VOCAB // 2, VOCAB - VOCAB // 2, dtype=np.float32) / 64
        out[:, :VOCAB] = np.stack([rng.permutation(grid) for _ in range(batch)]) * scale
    else:
        out[:, :VOCAB] = rng.standard_normal((batch, VOCAB)).astype(np.float32) * scale
    return out


def _params(batch: int, seed: int, step: int) -> np.ndarray:
    pick = np.arange(batch) % len(TEMPERATURE)
    return host_sampling.device_params(SamplingBatch(
        temperature=np.take(TEMPERATURE, pick), top_k=np.take(TOP_K, pick), top_p=np.take(TOP_P, pick),
        seed=seed + np.arange(batch), step=np.full(batch, step)))


def _draws(runners, kind: str, batch: int, seed: int) -> dict[str, list[list[int]]]:
    model = runners["sim"].model
    placements = [Replicate(), Replicate()]
    placements[model.vocab_axis] = Shard(1)
    shards = model.be.spec.shape[model.vocab_axis]
    rng = np.random.default_rng(seed)
    out: dict = {"host": [], "sim": [], "ttnn": [], "argmax": []}
    for step in range(STEPS):
        logits, params = _logits(rng, batch, model.layout.vocab, kind), _params(batch, seed, step)
        out["argmax"].append(logits[:, :VOCAB].argmax(-1).tolist())
        out["host"].append(host_sampling.draw(*host_sampling.candidates(logits, VOCAB, shards), params).tolist())
        for name, runner in runners.items():
            be = runner.backend
            t = be.from_host(logits, tuple(placements), dtype=DType.float32, name="logits")
            out[name].append(be.read_ids(runner.model.sample(t, be.input_tensor(params, REPLICATED, name="sampling"))).tolist())
    return out


@pytest.mark.parametrize("kind", ["bf16", "float32"])
@pytest.mark.parametrize("batch,seed", [(3, 7), (8, 11), (32, 1000)])
def test_seeded_draws_equal_the_simulators_and_the_reference(runners, kind, batch, seed):
    with ttnn_emu.installed():
        draws = _draws(runners, kind, batch, seed)
    assert draws["ttnn"] == draws["sim"] == draws["host"]
    got, argmax = np.array(draws["host"]), np.array(draws["argmax"])
    assert got.max() < VOCAB and len({tuple(d) for d in draws["host"]}) == STEPS  # the seeded draws change with the step
    greedy = [u for u in range(batch) if TEMPERATURE[u % len(TEMPERATURE)] == 0 or TOP_K[u % len(TOP_K)] == 1]
    assert greedy and (got[:, greedy] == argmax[:, greedy]).all()  # greedy and top-k 1: the largest logit


def test_the_top_p_threshold_is_the_float32_value_of_the_last_kept_candidate(runners):
    """A top logit that rounds up in bf16, kept alone (greedy, top-k 1, a tiny top-p): every backend
    draws its id (a threshold rounded to bf16 lies above it and keeps nothing)."""
    import ml_dtypes

    model = runners["sim"].model
    width = model.layout.vocab
    logits = np.zeros((4, width), np.float32)
    logits[:, :VOCAB] = -1.0
    top = np.float32(1 + 3 * 2.0 ** -9)  # bf16 keeps 8 significant bits: this rounds up to 1 + 2**-7
    assert np.float32(ml_dtypes.bfloat16(top)) > top
    ids = [17, 260, 499, 3]
    logits[np.arange(4), ids] = top
    params = host_sampling.device_params(SamplingBatch(np.array([0.0, 1.0, 0.7, 1.0]), np.array([0, 1, 0, 0]),
                                                       np.array([1.0, 1.0, 0.01, 1.0]), np.arange(4), np.zeros(4, np.int64)))
    placements = [Replicate(), Replicate()]
    placements[model.vocab_axis] = Shard(1)
    with ttnn_emu.installed():
        for name, runner in runners.items():
            be = runner.backend
            t = be.from_host(logits, tuple(placements), dtype=DType.float32, name="logits")
            got = be.read_ids(runner.model.sample(t, be.input_tensor(params, REPLICATED, name="sampling"))).tolist()
            assert got[:3] == ids[:3], name  # greedy, top-k 1, top-p 0.01: the top candidate alone
