"""Grammar masks on the mesh: the chips' bit-plane words say exactly what llguidance's bitmask
says, the simulator's masked draw equals the numpy reference and never draws a masked token, and
the ttnn backend on emulated chips draws the same ids as the simulator under the same mask."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh import REPLICATED, SamplingBatch, Shard, make_backend, parse_mesh, token_mask, ttnn_emu
from ttdist.mesh.placement import with_axis
from ttdist.mesh.precision import DType
from ttdist.mesh.sampling import candidates, device_params, draw

BATCH = 6
PARAMS = SamplingBatch(
    temperature=np.array([0.0, 0.7, 1.0, 1.5, 0.9, 1.0]), top_k=np.array([0, 5, 0, 40, 1, 3]),
    top_p=np.array([1.0, 0.9, 0.5, 1.0, 1.0, 0.8]), seed=np.array([-1, 1, 2, 3, 4, 5]), step=np.zeros(6, dtype=np.int64))


def _bitmask(allowed: np.ndarray) -> np.ndarray:
    """llguidance's layout: bit t % 32 of int32 word t // 32."""
    words = -(-allowed.shape[1] // 32)
    bits = np.zeros((allowed.shape[0], words * 32), dtype=np.uint8)
    bits[:, : allowed.shape[1]] = allowed
    return np.packbits(bits, axis=-1, bitorder="little").view(np.int32)


def _case(rng, n: int, vocab: int):
    width = -(-vocab // (32 * n)) * 32
    logits = (rng.standard_normal((BATCH, width * n)) * 3).astype(np.float32)
    allowed = rng.random((BATCH, vocab)) < np.array([0.002, 0.01, 0.05, 0.3, 0.5, 1.0])[:, None]
    allowed[np.arange(BATCH), rng.integers(0, vocab, BATCH)] = True    # a grammar always allows some token
    return logits, allowed, width


def test_pack_gives_each_chip_its_slice_in_bit_planes():
    rng = np.random.default_rng(0)
    for n, vocab in ((1, 100), (2, 500), (8, 1000), (2, 49152), (8, 65536 - 7)):   # the last two: the bit-transpose path
        _, allowed, width = _case(rng, n, vocab)
        words = token_mask.pack(_bitmask(allowed), width, n)
        assert words.shape == (BATCH, width * n // 32) and words.dtype == np.int32
        want = np.zeros((BATCH, width * n), np.float32)
        want[:, :vocab] = allowed
        np.testing.assert_array_equal(token_mask.unpack(words, n), want)


def _sample(be, logits, vocab, params, words, axis):
    placed = be.from_host(logits, with_axis(REPLICATED, axis, Shard(1)), dtype=DType.float32, name="logits")
    mask = be.input_tensor(words, with_axis(REPLICATED, axis, Shard(1)), name=token_mask.INPUT_NAME)
    be.transfers.clear()
    ids = be.read_ids(be.sample(placed, vocab, be.input_tensor(params, REPLICATED), axis, allowed=mask))
    assert (be.transfers.readbacks, be.transfers.readback_bytes) == (1, BATCH * 4)   # only the ids leave the mesh
    return ids


@pytest.mark.parametrize("mesh", ["1x1", "1x2", "1x8", "8x4"])
def test_sim_masked_draws_equal_the_reference_and_stay_allowed(mesh):
    pytest.importorskip("torch")
    be = make_backend(parse_mesh(mesh), "sim")
    axis = 1 if be.spec.rows == 1 else 0
    n = be.spec.shape[axis]
    rng = np.random.default_rng(1)
    for step in range(8):
        vocab = 64 * n - 5
        logits, allowed, width = _case(rng, n, vocab)
        words = token_mask.pack(_bitmask(allowed), width, n)
        params = device_params(SamplingBatch(*(getattr(PARAMS, f) for f in ("temperature", "top_k", "top_p", "seed")),
                                             PARAMS.step + step))
        got = _sample(be, logits, vocab, params, words, axis)
        masked = token_mask.apply(logits, token_mask.unpack(words, n))
        np.testing.assert_array_equal(got, draw(*candidates(masked, vocab, n), params))
        assert all(allowed[b, got[b]] for b in range(BATCH))
        real = np.where(allowed, logits[:, :vocab], -np.inf)
        assert got[0] == real[0].argmax() and got[4] == real[4].argmax()   # greedy, top-k 1: the best allowed


def _bf16(x: np.ndarray) -> np.ndarray:
    """Values a bfloat16 LM head gives (ttnn's draw sorts candidates in bfloat16, so its threshold is exact only
    for logits that are bfloat16 values already, as the model's are)."""
    return (x.astype(np.float32).view(np.uint32) + 0x8000 & 0xFFFF0000).view(np.float32)


@pytest.mark.parametrize("mesh", ["n300", "t3k"])
def test_ttnn_on_emulated_chips_draws_what_the_simulator_draws_under_a_mask(mesh):
    pytest.importorskip("torch")
    spec = parse_mesh(mesh)
    rng = np.random.default_rng(2)
    with ttnn_emu.installed():
        from ttdist.mesh.ttnn.device import open_device

        emu = make_backend(spec, "ttnn", device=open_device(spec))
        sim = make_backend(spec, "sim")
        axis = 1 if spec.rows == 1 else 0
        n = spec.shape[axis]
        for step in range(4):
            vocab = 1024 * n - 37
            logits, allowed, width = _case(rng, n, vocab)
            logits = _bf16(logits)
            words = token_mask.pack(_bitmask(allowed), width, n)
            params = device_params(SamplingBatch(*(getattr(PARAMS, f) for f in ("temperature", "top_k", "top_p", "seed")),
                                                 PARAMS.step + step))
            got = _sample(emu, logits, vocab, params, words, axis)
            np.testing.assert_array_equal(got, _sample(sim, logits, vocab, params, words, axis))
            assert all(allowed[b, got[b]] for b in range(BATCH))
