"""The Llama model's prefill and decode steps through the ttnn backend on the mock mesh.

Shapes: a tiny config, SmolLM2-135M (one decoder layer, full vocabulary), and one
decoder layer of Llama-3.1-8B and -70B. Weights are random numpy arrays placed by the
model's own layout. Every op must be accepted by ttnn; output shapes are checked, and
ttnn's allocator is compared with the simulator-rule DRAM ledger.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

# ``ttnn._ttnn``, not ``ttnn``: without the wheel, tests/ttnn itself imports as a namespace package.
pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

from ttdist.mesh import REPLICATED, Replicate, SamplingBatch, make_backend  # noqa: E402
from ttdist.mesh.precision import DType, Precision  # noqa: E402
from ttdist.mesh.sampling import device_params  # noqa: E402
from ttdist.mesh.accounting import tile_padded_bytes  # noqa: E402
from ttdist.model.config import LlamaConfig  # noqa: E402
from ttdist.model.layout import Layout  # noqa: E402
from ttdist.model.llama import CacheConfig, Decoder, KVCache, LlamaModel  # noqa: E402
from ttdist.model.rope import RopeTable  # noqa: E402
from ttdist.model.user_groups import decode_rows  # noqa: E402
from ttdist.model.weights import expected_shapes, prepare  # noqa: E402
from ttdist.model.weights.layout_arrays import layer_tensors  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32)
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=1, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, rope_theta=100000.0, tie_word_embeddings=True)
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=1, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, rope_theta=500000.0)
LLAMA_70B = dict(LLAMA_8B, hidden_size=8192, intermediate_size=28672, num_attention_heads=64)


def _random(shape, rng) -> np.ndarray:
    """Random values without paying for a full draw on big matrices: one random block, tiled."""
    if int(np.prod(shape)) <= 1 << 22:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)
    block = (rng.standard_normal((min(shape[0], 512), min(shape[-1], 512))) * 0.02).astype(np.float32)
    reps = (-(-shape[0] // block.shape[0]), -(-shape[-1] // block.shape[1]))
    return np.tile(block, reps)[: shape[0], : shape[1]]


def _hf(config: LlamaConfig, rng, layers_only: bool = False) -> dict:
    return {k: _random(s, rng) for k, s in expected_shapes(config).items() if not layers_only or k.startswith("model.layers.")}


def _steps(model: LlamaModel, vocab: int) -> None:
    prompt = list(range(1, 41))
    logits = model.prefill_forward(prompt, 0, [3, 1])
    assert logits.shape == (1, model.layout.vocab_local)  # vocab-sharded: only sampled ids leave
    logits = model.prefill_forward(list(range(5)), 64, [3, 1, 0])
    assert logits.shape == (1, model.layout.vocab_local)
    tables = np.array([[3, 1, 0], [2, -1, -1], [4, 5, -1]])
    logits = model.decode_forward([7, 8, 9], [69, 12, 40], tables)
    assert logits.shape[0] == 3 and logits.shape[1] * model.layout.n_inner == model.layout.vocab
    params = model.be.input_tensor(device_params(SamplingBatch.greedy(3)), REPLICATED, name="sampling")
    ids = model.be.read_ids(model.sample(logits, params))
    assert ids.shape == (3,) and ids.max() < vocab
    assert model.logits_to_host(logits).shape == (3, vocab)


def _check_dram(backend) -> None:
    """ttnn's allocator holds at least what every live tensor's layout needs; the ledger differs by
    the fixed layout terms only (DRAM-sharded weights padded to 12 tile columns, row-major
    norm vectors and tables, per-bank page rounding)."""
    gc.collect()
    report = backend.dram_report()
    assert report.allocator_bytes >= report.layout_bytes > 0
    ledger, layout = report.by_kind["cache"]
    assert layout >= ledger


@pytest.mark.parametrize("dims", [TINY, SMOLLM2], ids=["tiny", "smollm2-1layer"])
def test_model_prefill_and_decode(backend, spec, dims):
    config = LlamaConfig(**dims)
    weights = prepare(config, _hf(config, np.random.default_rng(0)), spec, DType.bfloat8_b)
    model = LlamaModel(backend, weights, CacheConfig(num_pages=8, page_size=32, dtype=DType.bfloat8_b))
    _steps(model, config.vocab_size)
    _check_dram(backend)


@pytest.mark.parametrize("precision", ["float32", "accuracy"])
def test_float32_and_the_default_precision_run_on_ttnn(mesh_device, spec, precision):
    """``--dtype float32`` (float32 activations wherever ttnn takes them; bf16 for the KV cache and
    SDPA's inputs) and ttnn's default ``accuracy`` (bf16 activations): every op accepted, decode included."""
    config = LlamaConfig(**TINY)
    chosen = Precision.parse(precision)
    backend = make_backend(spec, "ttnn", device=mesh_device, activation_dtype=chosen.activations)
    weights = prepare(config, _hf(config, np.random.default_rng(2)), spec, DType.float32, precision=chosen)
    model = LlamaModel(backend, weights, CacheConfig(num_pages=8, page_size=32, dtype=chosen.kv_cache))
    _steps(model, config.vocab_size)
    backend.close()


def test_dram_allocator_matches_weight_layouts(backend):
    """ttnn reserves exactly what the chosen layouts predict, which differs from the ledger by fixed terms."""
    before = backend.dram_report().allocator_bytes
    w = backend.from_host(np.zeros((256, 800), np.float32), (Replicate(), Replicate()), dtype=DType.bfloat8_b, name="w")
    norm = backend.from_host(np.ones(256, np.float32), (Replicate(), Replicate()), name="norm")
    x = backend.from_host(np.zeros((1, 256), np.float32), (Replicate(), Replicate()), name="x")
    backend.linear(backend.rms_norm(x, norm, eps=1e-5, width=256), w)
    grown = backend.dram_report().allocator_bytes - before
    # DRAM-sharded: 800 columns padded to 12 banks x 3 tiles (1152), 8 x 36 tiles of 1024 bfp8 values + exponents
    sharded = 256 * 1152 * (1 + 1 / 16)
    vector = 12 * 64  # 256 bf16 values row-major: 8 pages of 64 bytes, one page per bank
    assert grown == sharded + vector
    assert backend.dram.by_name["w"] == tile_padded_bytes((256, 800), DType.bfloat8_b) == 256 * 800 * (1 + 1 / 16)
    assert sharded - backend.dram.by_name["w"] == 256 * (1152 - 800) * (1 + 1 / 16)


@pytest.mark.slow
@pytest.mark.parametrize("dims", [LLAMA_8B, LLAMA_70B], ids=["llama-3.1-8b", "llama-3.1-70b"])
def test_one_decoder_layer(backend, spec, dims):
    config = LlamaConfig(**dims)
    layout = Layout(config, spec)
    arrays = dict(layer_tensors(layout, _hf(config, np.random.default_rng(1), layers_only=True), 0))
    plans = {p.name: p for p in layout.plans()}
    placed = {kind: backend.from_host(a, plans[kind].placements, dtype=DType.bfloat4_b if kind in ("w1", "w3") else
                                      (DType.bfloat8_b if a.ndim == 2 else DType.bfloat16), name=f"weights.{kind}")
              for kind, a in arrays.items()}
    del arrays
    cache = KVCache(backend, layout, CacheConfig(num_pages=8, page_size=64, dtype=DType.bfloat8_b), 0)
    layer = Decoder(backend, layout, placed, cache)

    rope = RopeTable(config)
    for rows, start in ((128, 0), (32, 128)):
        x = backend.from_host(np.zeros((rows, layout.hidden), np.float32), layout.residual, name="x")
        cos, sin = (backend.from_host(a, REPLICATED, dtype=DType.float32) for a in rope.cos_sin(np.arange(start, start + rows)))
        out = layer.forward_prefill(x, cos, sin, np.array([0, 1, 2, 3]), start)
        assert out.shape == x.shape and out.placements == x.placements
    batch = decode_rows(8, layout.user_groups)  # 8 slots; on a Galaxy a whole tile of rows, 8 per column
    positions = np.arange(batch) * 20 % 180
    tables = np.arange(batch * 3).reshape(batch, 3) % 8  # ids of each slot's group's pool
    x = backend.from_host(np.zeros((batch, layout.hidden), np.float32), layout.residual, name="x")
    rows = layout.per_group_rows(0)
    # each column's rotary rows as the model makes them: looked up in resident tables by its own slots' positions
    index = backend.input_tensor(positions.astype(np.uint32).reshape(1, -1), layout.per_group_rows(1), name="rope_index")
    cos, sin = (backend.embedding(index, backend.from_host(a, REPLICATED, dtype=DType.float32, name="rope_table"))
                for a in rope.cos_sin(np.arange(positions.max() + 1)))
    out = layer.forward_decode(x, cos, sin, backend.input_tensor(tables.astype(np.int32), rows, name="page_table"),
                               backend.input_tensor(positions.astype(np.int32), rows, name="positions"))
    assert out.shape == x.shape
    _check_dram(backend)
