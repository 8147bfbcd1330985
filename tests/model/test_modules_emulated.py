"""Each module of the unchanged ttnn backend on emulated chips against the matching transformers
module (PCC >= 0.999): attention (prefill and a decode batch), MLP, a decoder layer and the LM head
on an emulated N300, T3000 and Galaxy. Float32 weights; activations, SDPA inputs and the KV cache
in bfloat16, as the backend runs them (paged SDPA decode takes no float32)."""

import numpy as np
import pytest
import torch

from tests.support.model_checks import causal_mask, pcc
from ttdist.mesh import DType, ttnn_emu
from ttdist.model.runner import MeshModelRunner

PAGE = 32


@pytest.fixture(scope="module", params=["1x2", "1x8", "8x4"])
def runner(request, tiny_ckpt, weight_cache):
    with ttnn_emu.installed():
        yield MeshModelRunner.from_checkpoint(tiny_ckpt, mesh=request.param, backend="ttnn", dtype="float32", kv_dtype="bfloat16",
                                              num_pages=32, page_size=PAGE, max_batch=8, cache_dir=weight_cache)


def place(runner, x: np.ndarray):
    lay = runner.model.layout
    return runner.backend.from_host(lay.pad_hidden(x, 1), lay.residual, dtype=DType.float32, name="x")


def host(runner, t) -> np.ndarray:
    return runner.backend.to_host(t)[:, : runner.model.config.hidden_size]


def rope(hf, t0, t1):
    return hf.model.rotary_emb(torch.zeros(1, t1 - t0, 1), torch.arange(t0, t1)[None])


def test_mlp(runner, hf_tiny):
    x = np.random.default_rng(2).standard_normal((7, 64)).astype(np.float32)
    out = runner.model.layers[1].mlp.forward(place(runner, x))
    with torch.no_grad():
        ref = hf_tiny.model.layers[1].mlp(torch.from_numpy(x)).numpy()
    assert pcc(host(runner, out), ref) >= 0.999


def test_attention_prefill_and_decode(runner, hf_tiny):
    """Users with prefixes of 5, 33 and 40 tokens, prefilled one by one, then one decode batch (on the
    Galaxy in three user groups, five slots idle in a 32-row tile)."""
    rng = np.random.default_rng(4)
    model = runner.model
    lengths, tables = [5, 33, 40], [[0, 1], [10, 11], [20, 21]]
    attn = model.layers[0].attention
    seqs = [rng.standard_normal((n + 1, 64)).astype(np.float32) for n in lengths]
    for seq, n, table in zip(seqs, lengths, tables):
        cos, sin = model._rope(np.arange(n))
        out = host(runner, attn.forward_prefill(place(runner, seq[:n]), cos, sin, model.prefill_table(table), 0))
        with torch.no_grad():
            ref, _ = hf_tiny.model.layers[0].self_attn(torch.from_numpy(seq[:n])[None], rope(hf_tiny, 0, n), causal_mask(n))
        assert pcc(out, ref[0].numpy()) >= 0.999
    groups = [model.groups.group_of(t) for t in tables]
    slots = runner.slots.assign(["a", "b", "c"], 3, groups)
    rows = model.groups.rows
    new = np.zeros((rows, 64), np.float32)
    new[slots] = np.stack([seq[n] for seq, n in zip(seqs, lengths)])
    inputs = model.place_inputs(model.host_inputs([1, 1, 1], lengths, tables, np.zeros((0, 4), np.float32), rows, slots))
    cos, sin = model._rope(inputs.rope_index)
    out = host(runner, attn.forward_decode(place(runner, new), cos, sin, inputs.page_table, inputs.positions))[slots]
    for u, (seq, n) in enumerate(zip(seqs, lengths)):
        with torch.no_grad():
            ref, _ = hf_tiny.model.layers[0].self_attn(torch.from_numpy(seq)[None], rope(hf_tiny, 0, n + 1), causal_mask(n + 1))
        assert pcc(out[u], ref[0, -1].numpy()) >= 0.999


def test_decoder_layer(runner, hf_tiny):
    t = 9
    x = np.random.default_rng(5).standard_normal((t, 64)).astype(np.float32)
    cos, sin = runner.model._rope(np.arange(t))
    out = runner.model.layers[1].forward_prefill(place(runner, x), cos, sin, runner.model.prefill_table([7]), 0)
    with torch.no_grad():
        ref = hf_tiny.model.layers[1](torch.from_numpy(x)[None], attention_mask=causal_mask(t), position_embeddings=rope(hf_tiny, 0, t))
    ref = ref[0] if isinstance(ref, tuple) else ref
    assert pcc(host(runner, out), ref[0].numpy()) >= 0.999


def test_lm_head(runner, hf_tiny):
    x = np.random.default_rng(6).standard_normal((4, 64)).astype(np.float32)
    out = runner.model.logits_to_host(runner.model.lm_head.forward(place(runner, x)))
    with torch.no_grad():
        ref = hf_tiny.lm_head(hf_tiny.model.norm(torch.from_numpy(x))).numpy()
    assert pcc(out, ref) >= 0.999
