"""Emulated attention ops against numpy references of ttnn's goldens (transformer_golden.py) and
their docs: head shuffles, rotary, paged cache writes, causal / chunked / paged-decode SDPA."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh.ttnn_emu.testing import fresh_ttnn, open_mesh, per_chip, upload

NQ, NKV, HD, PAGE, PAGES = 4, 2, 32, 32, 6


@pytest.fixture
def ttnn():
    return fresh_ttnn()


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def attention(q, k, v, mask):
    """_scaled_attention: KV heads repeated to the query heads, softmax(q k^T / sqrt(d)) v."""
    k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
    v = np.repeat(v, q.shape[-3] // v.shape[-3], axis=-3)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)


def test_create_heads_split_q_k_v_in_both_layouts(ttnn, rng):
    dev = open_mesh(ttnn, 1, 1)
    fused = rng.standard_normal((1, 1, 8, (NQ + 2 * NKV) * HD)).astype(np.float32)
    t = upload(ttnn, dev, fused)
    q, k, v = ttnn.experimental.nlp_create_qkv_heads(t, num_heads=NQ, num_kv_heads=NKV, transpose_k_heads=False)
    heads = fused[0, 0].reshape(8, NQ + 2 * NKV, HD).transpose(1, 0, 2)
    np.testing.assert_array_equal(per_chip(ttnn, q)[0, 0, 0], heads[:NQ])
    np.testing.assert_array_equal(per_chip(ttnn, v)[0, 0, 0], heads[NQ + NKV:])
    dq, dk, _ = ttnn.experimental.nlp_create_qkv_heads_decode(t, num_heads=NQ, num_kv_heads=NKV,
                                                             memory_config=ttnn.L1_HEIGHT_SHARDED_MEMORY_CONFIG)
    assert list(dq.shape) == [1, 8, NQ, HD] and list(dq.padded_shape) == [1, 8, 32, HD]
    assert dq.memory_config().memory_layout == ttnn.TensorMemoryLayout.HEIGHT_SHARDED
    np.testing.assert_array_equal(per_chip(ttnn, dk)[0, 0, 0], heads[NQ:NQ + NKV].transpose(1, 0, 2))
    back = ttnn.experimental.nlp_concat_heads(q)
    np.testing.assert_array_equal(per_chip(ttnn, back)[0, 0], fused[:, :, :, : NQ * HD])


def test_rotary_hf_rotates_half_per_position(ttnn, rng):
    dev = open_mesh(ttnn, 1, 2)
    x = rng.standard_normal((1, NQ, 40, HD)).astype(np.float32)
    cos, sin = (rng.standard_normal((1, 1, 40, HD)).astype(np.float32) for _ in range(2))
    out = ttnn.experimental.rotary_embedding_hf(upload(ttnn, dev, x), upload(ttnn, dev, cos), upload(ttnn, dev, sin))
    np.testing.assert_allclose(per_chip(ttnn, out)[0, 1], x * cos + rotate_half(x) * sin, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="height-sharded"):
        ttnn.experimental.rotary_embedding_hf(upload(ttnn, dev, x), upload(ttnn, dev, cos), upload(ttnn, dev, sin), is_decode_mode=True)


def _cache(ttnn, dev, rng, dtype):
    t = upload(ttnn, dev, rng.standard_normal((PAGES, NKV, PAGE, HD)).astype(np.float32), dtype=dtype)
    return per_chip(ttnn, t)[0, 0].copy(), t


def test_paged_update_then_decode_sdpa_match_golden(ttnn, rng):
    dev = open_mesh(ttnn, 1, 1)
    kdata, kcache = _cache(ttnn, dev, rng, ttnn.bfloat16)
    vdata, vcache = _cache(ttnn, dev, rng, ttnn.bfloat16)
    table = np.array([[4, 1], [0, 2], [5, 3]], np.int32)
    pos = np.array([37, 3, -1], np.int32)
    new = rng.standard_normal((1, 1, 3, (NQ + 2 * NKV) * HD)).astype(np.float32)
    q, k, v = ttnn.experimental.nlp_create_qkv_heads_decode(upload(ttnn, dev, new, dtype=ttnn.bfloat16), num_heads=NQ, num_kv_heads=NKV)
    t_pos = upload(ttnn, dev, pos, dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    t_table = upload(ttnn, dev, table, dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    ttnn.experimental.paged_update_cache(kcache, k, update_idxs_tensor=t_pos, page_table=t_table)
    ttnn.experimental.paged_update_cache(vcache, v, update_idxs_tensor=t_pos, page_table=t_table)
    kh, vh, qh = (per_chip(ttnn, x)[0, 0, 0] for x in (k, v, q))
    for b, p in enumerate(pos):
        if p >= 0:
            kdata[table[b, p // PAGE], :, p % PAGE] = kh[b]
            vdata[table[b, p // PAGE], :, p % PAGE] = vh[b]
    np.testing.assert_array_equal(per_chip(ttnn, kcache)[0, 0], kdata)
    out = ttnn.transformer.paged_scaled_dot_product_attention_decode(
        q, kcache, vcache, cur_pos_tensor=t_pos, page_table_tensor=t_table, scale=HD ** -0.5)
    got = per_chip(ttnn, out)[0, 0, 0]
    assert list(out.shape) == [1, 3, NQ, HD]
    for b in range(2):
        keys = np.concatenate([kdata[pg] for pg in table[b]], axis=1)[:, : pos[b] + 1]
        vals = np.concatenate([vdata[pg] for pg in table[b]], axis=1)[:, : pos[b] + 1]
        want = attention(qh[b][:, None], keys, vals, np.ones((1, pos[b] + 1), bool))[:, 0]
        np.testing.assert_allclose(got[b], want, rtol=2e-2, atol=2e-2)


def test_paged_sdpa_decode_refuses_float32_inputs(ttnn, rng):
    dev = open_mesh(ttnn, 1, 1)
    _, kcache = _cache(ttnn, dev, rng, ttnn.float32)
    q = upload(ttnn, dev, rng.standard_normal((1, 2, NQ, HD)).astype(np.float32), dtype=ttnn.float32)
    idx = upload(ttnn, dev, np.zeros(2, np.int32), dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    table = upload(ttnn, dev, np.zeros((2, 1), np.int32), dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    with pytest.raises(RuntimeError, match="TT_FATAL.*BFLOAT16"):
        ttnn.transformer.paged_scaled_dot_product_attention_decode(q, kcache, kcache, cur_pos_tensor=idx, page_table_tensor=table)


@pytest.mark.parametrize("which", ["Q", "K", "V"])
def test_causal_and_chunked_sdpa_refuse_float32_inputs(ttnn, rng, which):
    """As ttnn 0.81.1 on mocked chips does (``sdpa_device_operation.cpp``): float32 activations go
    into attention as bf16."""
    dev = open_mesh(ttnn, 1, 1)
    data = {n: rng.standard_normal((1, NQ if n == "Q" else NKV, 64, HD)).astype(np.float32) for n in "QKV"}
    made = {n: upload(ttnn, dev, a, dtype=ttnn.float32 if n == which else ttnn.bfloat16) for n, a in data.items()}
    with pytest.raises(RuntimeError, match=f"TT_FATAL scaled_dot_product_attention: {which} dtype .*FLOAT32"):
        ttnn.transformer.scaled_dot_product_attention(made["Q"], made["K"], made["V"], is_causal=True)
    _, kcache = _cache(ttnn, dev, rng, ttnn.bfloat16)
    table = upload(ttnn, dev, np.array([[0, 1]], np.int32), dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    if which == "Q":
        with pytest.raises(RuntimeError, match="TT_FATAL chunked_scaled_dot_product_attention: Q dtype .*FLOAT32"):
            ttnn.transformer.chunked_scaled_dot_product_attention(made["Q"], kcache, kcache, table, 32)
    else:
        _, f32cache = _cache(ttnn, dev, rng, ttnn.float32)
        caches = (f32cache, kcache) if which == "K" else (kcache, f32cache)
        q = upload(ttnn, dev, data["Q"], dtype=ttnn.bfloat16)
        with pytest.raises(RuntimeError, match=f"TT_FATAL chunked_scaled_dot_product_attention: {which} dtype .*FLOAT32"):
            ttnn.transformer.chunked_scaled_dot_product_attention(q, *caches, table, 32)


def test_fill_then_causal_and_chunked_sdpa_match_golden(ttnn, rng):
    dev = open_mesh(ttnn, 1, 2)
    kdata, kcache = _cache(ttnn, dev, rng, ttnn.bfloat16)
    vdata, vcache = _cache(ttnn, dev, rng, ttnn.bfloat16)
    table = np.array([[2, 5, 0]], np.int32)
    k, v = (rng.standard_normal((1, NKV, 64, HD)).astype(np.float32) for _ in range(2))
    t_table = upload(ttnn, dev, table[:, :2], dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    tk, tv = upload(ttnn, dev, k, dtype=ttnn.bfloat16), upload(ttnn, dev, v, dtype=ttnn.bfloat16)
    ttnn.experimental.paged_fill_cache(kcache, tk, t_table, batch_idx=0)
    ttnn.experimental.paged_fill_cache(vcache, tv, t_table, batch_idx=0)
    kk, vv = per_chip(ttnn, tk)[0, 0, 0], per_chip(ttnn, tv)[0, 0, 0]
    for i, page in enumerate(table[0, :2]):
        kdata[page], vdata[page] = kk[:, i * PAGE:(i + 1) * PAGE], vv[:, i * PAGE:(i + 1) * PAGE]
    np.testing.assert_array_equal(per_chip(ttnn, kcache)[0, 1], per_chip(ttnn, kcache)[0, 0])
    q = rng.standard_normal((1, NQ, 64, HD)).astype(np.float32)
    causal = ttnn.transformer.scaled_dot_product_attention(upload(ttnn, dev, q, dtype=ttnn.bfloat16), tk, tv, is_causal=True)
    qq = per_chip(ttnn, upload(ttnn, dev, q, dtype=ttnn.bfloat16))[0, 0, 0]
    mask = np.tril(np.ones((64, 64), bool))
    np.testing.assert_allclose(per_chip(ttnn, causal)[0, 0, 0], attention(qq, kk, vv, mask), rtol=2e-2, atol=2e-2)
    chunk_q = upload(ttnn, dev, q[:, :, :32], dtype=ttnn.bfloat16)
    full_table = upload(ttnn, dev, table, dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    chunked = ttnn.transformer.chunked_scaled_dot_product_attention(chunk_q, kcache, vcache, full_table, 32)
    keys = np.concatenate([kdata[pg] for pg in table[0]], axis=1)[:, :64]
    vals = np.concatenate([vdata[pg] for pg in table[0]], axis=1)[:, :64]
    mask = np.arange(64)[None, :] <= (32 + np.arange(32))[:, None]
    np.testing.assert_allclose(per_chip(ttnn, chunked)[0, 1, 0], attention(qq[:, :32], keys, vals, mask), rtol=2e-2, atol=2e-2)


def test_fill_cache_needs_the_cache_dtype_and_update_needs_bf16_or_fp32(ttnn, rng):
    dev = open_mesh(ttnn, 1, 1)
    _, cache = _cache(ttnn, dev, rng, ttnn.bfloat8_b)
    table = upload(ttnn, dev, np.zeros((1, 1), np.int32), dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    x = upload(ttnn, dev, np.zeros((1, NKV, 32, HD), np.float32), dtype=ttnn.bfloat16)
    with pytest.raises(RuntimeError, match="must match the cache"):
        ttnn.experimental.paged_fill_cache(cache, x, table, batch_idx=0)
    heads = upload(ttnn, dev, np.zeros((1, 1, 1, NKV * HD), np.float32), dtype=ttnn.bfloat8_b)
    heads = ttnn.to_memory_config(ttnn.reshape(heads, (1, 1, NKV, HD)), ttnn.create_sharded_memory_config(
        (32, HD), ttnn.num_cores_to_corerangeset(1, ttnn.CoreCoord(8, 8), True), ttnn.ShardStrategy.HEIGHT,
        ttnn.ShardOrientation.ROW_MAJOR, use_height_and_width_as_shard_shape=True))
    idx = upload(ttnn, dev, np.zeros(1, np.int32), dtype=ttnn.int32, layout=ttnn.ROW_MAJOR_LAYOUT)
    with pytest.raises(RuntimeError, match="FLOAT32"):
        ttnn.experimental.paged_update_cache(cache, heads, update_idxs_tensor=idx, page_table=table)
