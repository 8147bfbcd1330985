"""Each module on the mesh against the matching transformers module (PCC >= 0.999)."""

import numpy as np
import pytest
import torch

from tests.support.model_checks import MESHES, causal_mask, pcc
from ttdist.mesh import DType
from ttdist.model import ccl
from ttdist.model.runner import MeshModelRunner

PAGE = 32


@pytest.fixture(scope="module", params=MESHES)
def runner(request, tiny_ckpt, weight_cache):
    return MeshModelRunner.from_checkpoint(tiny_ckpt, mesh=request.param, dtype="float32", num_pages=32, page_size=PAGE, cache_dir=weight_cache)


def place(runner, x: np.ndarray):
    lay = runner.model.layout
    return runner.backend.from_host(lay.pad_hidden(x, 1), lay.residual, dtype=DType.float32, name="x")


def host(runner, t) -> np.ndarray:
    return runner.backend.to_host(t)[:, : runner.model.config.hidden_size]


def rope(hf, t0, t1):
    x = torch.zeros(1, t1 - t0, 1)
    return hf.model.rotary_emb(x, torch.arange(t0, t1)[None])


def test_rms_norm_plain_or_distributed(runner, hf_tiny):
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    layer = runner.model.layers[0]
    out = ccl.rms_norm(runner.backend, runner.model.layout, place(runner, x), layer.attention_norm, layer.eps)
    with torch.no_grad():
        ref = hf_tiny.model.layers[0].input_layernorm(torch.from_numpy(x)).numpy()
    assert pcc(host(runner, out), ref) >= 0.999
    np.testing.assert_allclose(host(runner, out), ref, atol=1e-5)


def test_mlp(runner, hf_tiny):
    x = np.random.default_rng(2).standard_normal((7, 64)).astype(np.float32)
    out = runner.model.layers[1].mlp.forward(place(runner, x))
    with torch.no_grad():
        ref = hf_tiny.model.layers[1].mlp(torch.from_numpy(x)).numpy()
    assert pcc(host(runner, out), ref) >= 0.999
    np.testing.assert_allclose(host(runner, out), ref, atol=1e-5)


def test_attention_prefill(runner, hf_tiny):
    t = 11
    x = np.random.default_rng(3).standard_normal((t, 64)).astype(np.float32)
    cos, sin = runner.model._rope(np.arange(t))
    out = runner.model.layers[0].attention.forward_prefill(place(runner, x), cos, sin, np.array([3]), 0)
    with torch.no_grad():
        ref, _ = hf_tiny.model.layers[0].self_attn(torch.from_numpy(x)[None], rope(hf_tiny, 0, t), causal_mask(t))
    assert pcc(host(runner, out), ref[0].numpy()) >= 0.999
    np.testing.assert_allclose(host(runner, out), ref[0].numpy(), atol=1e-5)


def test_attention_decode_batch_at_different_positions(runner, hf_tiny):
    """Three users with prefixes of 5, 33 and 40 tokens decode one token each in one batch; on a
    2D mesh they lie in three user groups (pages 0-7, 8-15, 16-23 of 32), each column attending
    for its own users from its own pool."""
    rng = np.random.default_rng(4)
    model = runner.model
    lengths, tables = [5, 33, 40], [[0, 1], [10, 11], [20, 21]]
    groups = [model.groups.group_of(t) for t in tables]
    assert groups == ([0, 1, 2] if model.layout.user_groups == 4 else [0, 0, 0])
    attn = model.layers[0].attention
    seqs = [rng.standard_normal((n + 1, 64)).astype(np.float32) for n in lengths]
    for seq, n, table in zip(seqs, lengths, tables):
        cos, sin = model._rope(np.arange(n))
        attn.forward_prefill(place(runner, seq[:n]), cos, sin, model.prefill_table(table), 0)
    slots = runner.slots.assign(["a", "b", "c"], 3, groups)
    rows = runner.info.max_batch
    new = np.zeros((rows, 64), np.float32)
    new[slots] = np.stack([seq[n] for seq, n in zip(seqs, lengths)])
    inputs = model.place_inputs(model.host_inputs([1, 1, 1], lengths, tables, np.zeros((0, 4), np.float32), rows, slots))
    cos, sin = model._rope(inputs.rope_index)
    out = host(runner, attn.forward_decode(place(runner, new), cos, sin, inputs.page_table, inputs.positions))[slots]
    for u, (seq, n) in enumerate(zip(seqs, lengths)):
        with torch.no_grad():
            ref, _ = hf_tiny.model.layers[0].self_attn(torch.from_numpy(seq)[None], rope(hf_tiny, 0, n + 1), causal_mask(n + 1))
        assert pcc(out[u], ref[0, -1].numpy()) >= 0.999
        np.testing.assert_allclose(out[u], ref[0, -1].numpy(), atol=1e-5)


def test_decoder_layer(runner, hf_tiny):
    t = 9
    x = np.random.default_rng(5).standard_normal((t, 64)).astype(np.float32)
    cos, sin = runner.model._rope(np.arange(t))
    out = runner.model.layers[1].forward_prefill(place(runner, x), cos, sin, np.array([7]), 0)
    with torch.no_grad():
        ref = hf_tiny.model.layers[1](torch.from_numpy(x)[None], attention_mask=causal_mask(t), position_embeddings=rope(hf_tiny, 0, t))
    ref = ref[0] if isinstance(ref, tuple) else ref
    assert pcc(host(runner, out), ref[0].numpy()) >= 0.999
    np.testing.assert_allclose(host(runner, out), ref[0].numpy(), atol=1e-4)
