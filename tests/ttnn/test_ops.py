"""Each protocol op through real ttnn on the mock mesh: accepted, right shapes and placements."""

from __future__ import annotations

import numpy as np
import pytest

# ``ttnn._ttnn``, not ``ttnn``: without the wheel, tests/ttnn itself imports as a namespace package.
pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

from ttdist.mesh import MeshError, PartialTensorError, Partial, Replicate, SamplingBatch, Shard  # noqa: E402
from ttdist.mesh.precision import DType  # noqa: E402

R = Replicate()


def _axis(spec):
    return 1 if spec.rows == 1 else 0


def test_open_mesh_matches_spec(backend, spec):
    assert tuple(backend.device.shape) == spec.shape
    assert backend.grid.cores >= 56


def test_from_host_to_host_round_trip_shapes(backend, spec):
    n = spec.cols
    x = backend.from_host(np.ones((64, 32 * n), np.float32), (R, Shard(1)), name="x")
    assert x.shape == (64, 32) and x.placements == (R, Shard(1))
    assert backend.to_host(x).shape == (64, 32 * n)  # mock chips read back zeros


def test_partial_host_placement_is_rejected(backend):
    with pytest.raises(MeshError, match="Partial"):
        backend.from_host(np.ones((32, 32), np.float32), (Partial(), R))


@pytest.mark.parametrize("rows", [8, 96])
@pytest.mark.parametrize("dtype", [DType.bfloat8_b, DType.bfloat4_b])
def test_linear_column_then_row_parallel(backend, spec, rows, dtype):
    axis = _axis(spec)
    n = spec.shape[axis]
    place = [R, R]
    place[axis] = Shard(1)
    w_up = backend.from_host(np.zeros((256, 128 * n), np.float32), tuple(place), dtype=dtype, name="w_up")
    place[axis] = Shard(0)
    w_down = backend.from_host(np.zeros((128 * n, 256), np.float32), tuple(place), dtype=dtype, name="w_down")
    x = backend.from_host(np.zeros((rows, 256), np.float32), (R, R), name="x")
    h = backend.linear(x, w_up)
    assert h.shape == (rows, 128) and h.placements[axis] == Shard(1)
    y = backend.linear(backend.silu_mul(h, h), w_down)
    assert y.shape == (rows, 256) and isinstance(y.placements[axis], Partial)
    with pytest.raises(PartialTensorError):
        backend.silu_mul(y, y)
    reduced = backend.all_reduce(y, cluster_axis=axis)
    assert reduced.placements == (R, R) and reduced.shape == (rows, 256)
    scattered = backend.reduce_scatter(y, dim=-1, cluster_axis=axis)
    assert scattered.shape == (rows, 256 // n) and scattered.placements[axis] == Shard(1)
    gathered = backend.all_gather(scattered, dim=-1, cluster_axis=axis)
    assert gathered.shape == (rows, 256) and gathered.placements == (R, R)
    assert backend.ccl.count() == 3


def test_linear_shape_mismatch_is_a_mesh_error(backend):
    x = backend.from_host(np.zeros((32, 64), np.float32), (R, R))
    w = backend.from_host(np.zeros((96, 64), np.float32), (R, R))
    with pytest.raises(MeshError, match="does not match"):
        backend.linear(x, w)


def test_embedding_norms_and_slice(backend, spec):
    cols = spec.cols
    table = backend.from_host(np.zeros((512, 64 * cols), np.float32), (R, Shard(1)), name="table")
    x = backend.embedding(np.array([3, 1, 4, 1, 5]), table)
    assert x.shape == (5, 64) and x.placements == (R, Shard(1))
    with pytest.raises(MeshError, match=r"\[0, 512\)"):
        backend.embedding(np.array([512]), table)
    weight = backend.from_host(np.ones(64 * cols, np.float32), (R, Shard(0)), name="norm")
    stats = backend.rms_norm_pre_all_gather(x)
    stats = backend.all_gather(stats, dim=-1, cluster_axis=1)
    assert stats.shape == (5, cols)
    y = backend.rms_norm_post_all_gather(x, stats, weight, eps=1e-5, width=60 * cols)
    assert y.shape == (5, 64)
    full = backend.all_gather(x, dim=-1, cluster_axis=1)
    w_full = backend.from_host(np.ones(64 * cols, np.float32), (R, R), name="norm_full")
    assert backend.rms_norm(full, w_full, eps=1e-5, width=64 * cols - 3).shape == (5, 64 * cols)
    if cols > 1:
        with pytest.raises(MeshError, match="distributed norm"):
            backend.rms_norm(x, weight, eps=1e-5, width=64)
    last = backend.slice_rows(full, 4, 5)
    assert last.shape == (1, 64 * cols)


def _heads_setup(backend, spec, rows):
    axis = _axis(spec)
    place = [R, R]
    place[axis] = Shard(1)
    n_q, n_kv, hd = 4, 2, 64
    qkv = backend.from_host(np.zeros((rows, (n_q + 2 * n_kv) * hd * spec.shape[axis]), np.float32), tuple(place), name="qkv")
    cache_shape = (8, n_kv * spec.shape[axis], 32, hd)
    k_cache = backend.zeros(cache_shape, tuple(place), name="k_cache")
    v_cache = backend.zeros(cache_shape, tuple(place), dtype=DType.bfloat8_b, name="v_cache")
    return qkv, k_cache, v_cache, (n_q, n_kv, hd)


def _rope(backend, rows, hd=64):
    return (backend.from_host(np.ones((rows, hd), np.float32), (R, R), dtype=DType.float32, name="cos"),
            backend.from_host(np.zeros((rows, hd), np.float32), (R, R), dtype=DType.float32, name="sin"))


@pytest.mark.parametrize("rows,start", [(64, 0), (7, 0), (40, 64)])
def test_prefill_attention(backend, spec, rows, start):
    qkv, k_cache, v_cache, (n_q, n_kv, hd) = _heads_setup(backend, spec, rows)
    q, k, v = backend.create_qkv_heads(qkv, n_q, n_kv, hd)
    assert (q.shape, k.shape) == ((rows, n_q, hd), (rows, n_kv, hd))
    cos, sin = _rope(backend, rows)
    q, k = backend.rotary(q, cos, sin), backend.rotary(k, cos, sin)
    table = np.array([5, 2, 7, 1])
    backend.paged_fill_cache(k_cache, k, table, start)
    backend.paged_fill_cache(v_cache, v, table, start)
    out = backend.sdpa_prefill(q, k, v, k_cache, v_cache, table, start, hd ** -0.5)
    flat = backend.concat_heads(out)
    assert flat.shape == (rows, n_q * hd) and flat.placements == qkv.placements
    with pytest.raises(MeshError, match="multiple of the page size"):
        backend.paged_fill_cache(k_cache, k, table, 3)


def test_decode_attention_and_sampling(backend, spec):
    batch = 5
    qkv, k_cache, v_cache, (n_q, n_kv, hd) = _heads_setup(backend, spec, batch)
    q, k, v = backend.create_qkv_heads(qkv, n_q, n_kv, hd)
    cos, sin = _rope(backend, batch)
    q, k = backend.rotary(q, cos, sin), backend.rotary(k, cos, sin)
    positions = np.array([0, 33, 70, -1, 5])
    table = np.array([[0, 1, 2], [3, 4, -1], [5, 6, 7], [-1, -1, -1], [1, -1, -1]])
    backend.paged_update_cache(k_cache, k, positions, table)
    backend.paged_update_cache(v_cache, v, positions, table)
    out = backend.sdpa_decode(q, k_cache, v_cache, table, positions, hd ** -0.5)
    assert backend.concat_heads(out).shape == (batch, n_q * hd)
    with pytest.raises(MeshError, match="pages per user"):
        backend.sdpa_decode(q, k_cache, v_cache, table[:, :1], positions, hd ** -0.5)


def test_sampling_on_the_mesh_reads_back_only_the_ids(backend, spec):
    """Local top-k per chip, all-gather of the candidates, the draw: accepted, and only B ids leave."""
    from ttdist.mesh.sampling import device_params

    batch, axis = 5, _axis(spec)
    n = spec.shape[axis]
    vocab_sharded = (R, Shard(1)) if axis == 1 else (Shard(1), R)
    logits = backend.from_host(np.zeros((batch, 512 * n), np.float32), vocab_sharded, name="logits")
    params = SamplingBatch(np.array([0.0, 0.7, 0.7, 1.0, 0.0]), np.array([0, 5, 32, 0, 0]), np.array([0, 0.9, 0, 0, 0]),
                           np.array([-1, 7, 7, 3, -1]), np.arange(batch))
    inputs = backend.input_tensor(device_params(params), (R, R), name="sampling")
    backend.transfers.clear()
    ids = backend.read_ids(backend.sample(logits, 512 * n - 24, inputs, axis))
    assert ids.shape == (batch,) and ids.min() >= 0 and ids.max() < 512 * n
    assert (backend.transfers.readbacks, backend.transfers.readback_bytes) == (1, batch * 4)


@pytest.mark.parametrize("processed", [False, True])
def test_logprobs_on_the_mesh_are_accepted_and_read_back_only_their_rows(backend, spec, processed):
    """The logprob path (labelled topk, log, the vocab-axis sums): accepted by real ttnn, and only
    B ids and B rows of 1 + 2k numbers leave; prompt rows likewise."""
    from ttdist.mesh.logprobs import TOP
    from ttdist.mesh.sampling import device_params

    batch, axis = 5, _axis(spec)
    n = spec.shape[axis]
    vocab_sharded = (R, Shard(1)) if axis == 1 else (Shard(1), R)
    logits = backend.from_host(np.zeros((batch, 512 * n), np.float32), vocab_sharded, name="logits")
    params = SamplingBatch(np.array([0.0, 0.7, 0.7, 1.0, 0.0]), np.array([0, 5, 32, 0, 0]), np.array([0, 0.9, 0, 0, 0]),
                           np.array([-1, 7, 7, 3, -1]), np.arange(batch))
    inputs = backend.input_tensor(device_params(params), (R, R), name="sampling")
    targets = backend.from_host(np.arange(batch, dtype=np.float32).reshape(-1, 1), (R, R), dtype=DType.float32)
    backend.transfers.clear()
    ids_t, rows_t = backend.sample_logprobs(logits, 512 * n - 24, inputs, axis, processed=processed)
    ids, rows = backend.read_ids(ids_t), backend.read_rows(rows_t)
    prompt = backend.read_rows(backend.prompt_logprobs(logits, 512 * n - 24, targets, axis))
    assert ids.shape == (batch,) and rows.shape == prompt.shape == (batch, 1 + 2 * TOP)
    assert backend.transfers.readback_bytes == batch * 4 + 2 * batch * (1 + 2 * TOP) * 4


def test_collective_needs_axis_on_2d(backend, spec):
    x = backend.from_host(np.zeros((32, 64), np.float32), (R, R))
    if spec.rows > 1 and spec.cols > 1:
        with pytest.raises(MeshError, match="cluster_axis is required"):
            backend.all_reduce(x)
    with pytest.raises(MeshError, match="cluster_axis must be"):
        backend.all_reduce(x, cluster_axis=2)


def test_the_backend_provides_what_its_op_mixins_use(backend):
    from ttdist.mesh.ttnn.attention import AttentionHost
    from ttdist.mesh.ttnn.collectives import CollectiveHost
    from ttdist.mesh.ttnn.sampling import SamplingHost

    for host in (AttentionHost, CollectiveHost, SamplingHost):
        assert isinstance(backend, host), host.__name__


def test_raw_logprobs_of_a_masked_draw_and_processed_masked_logprobs_are_accepted(backend, spec):
    """Under a grammar mask: the drawn ids scored on the raw logits (``prompt_logprobs`` with the
    ``[B]`` ids ``sample`` returned as targets) and the processed rows over the masked logits."""
    from ttdist.mesh import token_mask
    from ttdist.mesh.logprobs import TOP
    from ttdist.mesh.sampling import device_params

    batch, axis = 5, _axis(spec)
    n = spec.shape[axis]
    vocab_sharded = (R, Shard(1)) if axis == 1 else (Shard(1), R)
    logits = backend.from_host(np.zeros((batch, 512 * n), np.float32), vocab_sharded, name="logits")
    params = SamplingBatch(np.zeros(batch), np.zeros(batch, np.int64), np.ones(batch), np.full(batch, -1), np.arange(batch))
    inputs = backend.input_tensor(device_params(params), (R, R), name="sampling")
    words = backend.input_tensor(token_mask.all_allowed(batch, 512, n), vocab_sharded, name=token_mask.INPUT_NAME)
    ids_t = backend.sample(logits, 512 * n - 24, inputs, axis, allowed=words)
    raw = backend.read_rows(backend.prompt_logprobs(logits, 512 * n - 24, ids_t, axis))
    _, rows_t = backend.sample_logprobs(logits, 512 * n - 24, inputs, axis, allowed=words, processed=True)
    assert raw.shape == backend.read_rows(rows_t).shape == (batch, 1 + 2 * TOP)
