"""Logprobs on the mesh: the simulator equals the numpy reference and torch's ``log_softmax`` on
every mesh shape, only ``B x (1 + 2k)`` numbers leave the mesh, and the ttnn backend on emulated
chips equals the simulator (the emulator's ``topk`` labels and ``log`` follow ttnn's goldens)."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh import REPLICATED, SamplingBatch, Shard, logprobs, make_backend, parse_mesh, ttnn_emu
from ttdist.mesh.placement import with_axis
from ttdist.mesh.precision import DType
from ttdist.mesh.sampling import candidates, device_params, draw

torch = pytest.importorskip("torch", reason="the simulator runs on torch")

B = 8
PARAMS = SamplingBatch(np.tile([0.0, 0.7, 1.0, 1.5], 2), np.tile([0, 5, 0, 40], 2), np.tile([1.0, 0.9, 0.5, 1.0], 2),
                       np.arange(B), np.zeros(B, np.int64))


def _axis(spec) -> int:
    return 1 if spec.rows == 1 else 0


def _logits(spec, dtype=np.float32):
    n = spec.shape[_axis(spec)]
    width, vocab = 64 * n, 64 * n - 5   # the last chip holds 5 padded ids
    rng = np.random.default_rng(n)
    return (rng.standard_normal((B, width)) * 3).astype(dtype), vocab, n


def _run(be, logits, vocab, targets, processed):
    axis = _axis(be.spec)
    placed = be.from_host(logits, with_axis(REPLICATED, axis, Shard(1)), dtype=DType.float32, name="logits")
    params = be.input_tensor(device_params(PARAMS), REPLICATED)
    target_t = be.from_host(targets.reshape(-1, 1).astype(np.float32), REPLICATED, dtype=DType.float32)
    be.transfers.clear()
    ids_t, rows_t = be.sample_logprobs(placed, vocab, params, axis, processed=processed)
    ids, rows = be.read_ids(ids_t), be.read_rows(rows_t)
    prompt = be.read_rows(be.prompt_logprobs(placed, vocab, target_t, axis))
    return ids, rows, prompt


@pytest.mark.parametrize("mesh", ["1x1", "1x2", "1x8", "8x4"])
@pytest.mark.parametrize("processed", [False, True])
def test_sim_logprobs_equal_the_reference_and_log_softmax(mesh, processed):
    be = make_backend(parse_mesh(mesh), "sim")
    logits, vocab, n = _logits(be.spec)
    targets = np.random.default_rng(1).integers(0, vocab, B)
    ids, rows, prompt = _run(be, logits, vocab, targets, processed)
    k = logprobs.TOP
    assert be.transfers.readbacks == 3 and be.transfers.readback_bytes == B * 4 + 2 * B * (1 + 2 * k) * 4
    params = device_params(PARAMS)
    np.testing.assert_array_equal(ids, draw(*candidates(logits, vocab, n), params))   # the same draw as sample
    scale = 1.0 / params[:, 0] if processed else np.ones(B)
    np.testing.assert_allclose(rows, logprobs.rows(logits, vocab, n, ids, scale), atol=1e-5)
    want = torch.log_softmax(torch.tensor(logits[:, :vocab], dtype=torch.float64) * torch.tensor(scale)[:, None], -1)
    best = want.topk(k)
    assert np.abs(rows[:, 0] - want[np.arange(B), ids].numpy()).max() < 1e-4
    assert np.abs(rows[:, 1:k + 1] - best.values.numpy()).max() < 1e-4
    np.testing.assert_array_equal(rows[:, k + 1:], best.indices.numpy())
    raw = torch.log_softmax(torch.tensor(logits[:, :vocab], dtype=torch.float64), -1)
    assert np.abs(prompt[:, 0] - raw[np.arange(B), targets].numpy()).max() < 1e-4   # prompt rows: raw
    np.testing.assert_array_equal(prompt[:, k + 1:], raw.topk(k).indices.numpy())


def test_rows_split_to_each_requests_n():
    row = np.array([-0.5, -0.1, -0.7, -2.0, 7, 3, 9], np.float32)   # k = 3
    assert logprobs.split(row, 2) == (-0.5, [(7, pytest.approx(-0.1)), (3, pytest.approx(-0.7))])
    assert logprobs.split(row, 0) == (-0.5, []) and len(logprobs.split(row, 20)[1]) == 3


def _same_top(a: np.ndarray, b: np.ndarray, k: int) -> None:
    """Top ids equal except the order within ties (bf16 logits tie; ttnn's topk may break them
    either way), and a tie at the k-th value may put either tied id last."""
    for ra, rb in zip(a, b):
        va, ia, ib = ra[1:k + 1], ra[k + 1:], rb[k + 1:]
        for v in np.unique(va):
            pos = np.abs(va - v) < 1e-6
            if v > va.min():
                assert set(ia[pos]) == set(ib[pos])


@pytest.mark.parametrize("mesh", ["n300", "t3k", "tg"])
def test_ttnn_backend_on_emulated_chips_equals_the_simulator(mesh):
    spec = parse_mesh(mesh)
    logits, vocab, _ = _logits(spec)
    logits = logits.astype(np.float32)
    targets = np.random.default_rng(2).integers(0, vocab, B)
    out = {}
    with ttnn_emu.installed():
        from ttdist.mesh.ttnn.device import open_device

        for kind in ("sim", "ttnn"):
            be = make_backend(spec, kind, **({"device": open_device(spec)} if kind == "ttnn" else {}))
            axis = _axis(spec)
            bf16 = be.from_host(logits, with_axis(REPLICATED, axis, Shard(1)), dtype=DType.bfloat16, name="logits")
            params = be.input_tensor(device_params(PARAMS), REPLICATED)
            target_t = be.from_host(targets.reshape(-1, 1).astype(np.float32), REPLICATED, dtype=DType.float32)
            be.transfers.clear()
            ids_t, rows_t = be.sample_logprobs(bf16, vocab, params, axis, processed=True)
            out[kind] = (be.read_ids(ids_t), be.read_rows(rows_t), be.read_rows(be.prompt_logprobs(bf16, vocab, target_t, axis)))
            assert be.transfers.readback_bytes == B * 4 + 2 * B * (1 + 2 * logprobs.TOP) * 4
    np.testing.assert_array_equal(out["sim"][0], out["ttnn"][0])
    k = logprobs.TOP
    for sim, emu in zip(out["sim"][1:], out["ttnn"][1:]):
        np.testing.assert_allclose(sim[:, :k + 1], emu[:, :k + 1], atol=2e-3)
        _same_top(sim, emu, k)


def test_emulated_topk_returns_the_callers_labels_and_checks_them_as_ttnn_does():
    from ttdist.mesh.ttnn_emu.testing import fresh_ttnn, open_mesh, per_chip, upload

    ttnn = fresh_ttnn()
    device = open_mesh(ttnn, 1, 1)
    x = np.array([[[[0.5, 3.0, -1.0, 2.0]]]], np.float32)
    labels = np.array([[[[40, 41, 42, 43]]]], np.uint32)
    values, index = ttnn.topk(upload(ttnn, device, x), 2, dim=-1, indices_tensor=upload(ttnn, device, labels, dtype=ttnn.uint32))
    assert per_chip(ttnn, values)[0, 0].ravel().tolist() == [3.0, 2.0]
    assert per_chip(ttnn, index)[0, 0].ravel().tolist() == [41, 43] and index.dtype == ttnn.uint32
    with pytest.raises(RuntimeError, match="UINT16"):   # a float32 input needs 32-bit labels
        ttnn.topk(upload(ttnn, device, x), 2, indices_tensor=upload(ttnn, device, labels, dtype=ttnn.uint16))
    with pytest.raises(RuntimeError, match="stable"):
        ttnn.topk(upload(ttnn, device, x), 2, stable=True, indices_tensor=upload(ttnn, device, labels, dtype=ttnn.uint32))
    logged = per_chip(ttnn, ttnn.log(upload(ttnn, device, np.array([[[[1.0, np.e]]]], np.float32))))
    np.testing.assert_allclose(logged[0, 0].ravel(), [0.0, 1.0], atol=1e-6)


def test_runner_on_emulated_ttnn_traces_the_logprobs_step_apart_and_equals_the_simulator():
    """A traced runner keeps the default decode step's trace and captures the logprobs one apart;
    prompt and decode logprobs equal the simulator's (bf16 weights on an emulated N300)."""
    from ttdist.engine.runner import DecodeInput, PrefillInput, SamplingSpec
    from ttdist.model.config import LlamaConfig
    from ttdist.model.weights import expected_shapes, prepare

    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
    rng = np.random.default_rng(0)
    hf = {k: ((1 + 0.1 * rng.standard_normal(s)) if "norm" in k else rng.standard_normal(s) * 0.05).astype(np.float32)
          for k, s in expected_shapes(config).items()}
    spec = parse_mesh("n300")
    weights = prepare(config, hf, spec, DType.bfloat16)
    got = {}
    with ttnn_emu.installed():
        from ttdist.model.runner import MeshModelRunner

        for kind, trace in (("sim", False), ("ttnn", True)):
            runner = MeshModelRunner(weights, backend=kind, page_size=32, num_pages=16, max_batch=8, trace_decode=trace)
            prompt = list(range(3, 40))
            first = runner.prefill_logprobs(PrefillInput(prompt, 0, [0, 1], True, SamplingSpec(logprobs=3),
                                                         prompt_targets=tuple(prompt[1:]), prompt_logprobs=2))
            steps, token = [], first.token
            for step in range(4):
                spec_lp = SamplingSpec(logprobs=2 if step % 2 else None)
                inp = DecodeInput([token, 9], [37 + step, 20 + step], [[0, 1], [2, 3]], [spec_lp, SamplingSpec()],
                                  seq_ids=["a", "b"])
                out = runner.decode_logprobs(inp) if spec_lp.logprobs is not None else runner.decode(inp)
                steps.append(out)
                token = out.tokens[0] if spec_lp.logprobs is not None else out[0]
            if trace:
                assert set(runner._traces) == {(False, False, False), (True, False, False)}   # both steps captured, each on its own
            got[kind] = (first, steps)
            runner.close()
    sim, emu = got["sim"], got["ttnn"]
    assert sim[0].token == emu[0].token
    pairs = [(a, b) for a, b in zip(sim[0].prompt + [sim[0].sampled], emu[0].prompt + [emu[0].sampled])]
    pairs += [(a.logprobs[0], b.logprobs[0]) for a, b in zip(sim[1][1::2], emu[1][1::2])]
    for a, b in pairs:
        assert a.token_id == b.token_id and abs(a.logprob - b.logprob) < 2e-2
        assert [v for _, v in a.top] == pytest.approx([v for _, v in b.top], abs=2e-2)
    assert [s.tokens if hasattr(s, "tokens") else s for s in sim[1]] == [s.tokens if hasattr(s, "tokens") else s for s in emu[1]]


@pytest.mark.parametrize("mode", ["raw", "processed"])
def test_emulated_ttnn_logprobs_under_penalties_and_a_grammar_equal_the_simulators(mode):
    """With penalties and a grammar mask on, raw logprobs are scored on the model's own logits (the
    drawn token picked from each chip's slice) and processed ones on the masked, penalized logits;
    the traced ttnn runner on an emulated N300 equals the simulator, and raw != processed."""
    from ttdist.engine.runner import DecodeInput, PenaltySpec, SamplingSpec
    from ttdist.model.config import LlamaConfig
    from ttdist.model.weights import expected_shapes, prepare

    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
    rng = np.random.default_rng(1)
    hf = {k: ((1 + 0.1 * rng.standard_normal(s)) if "norm" in k else rng.standard_normal(s) * 0.05).astype(np.float32)
          for k, s in expected_shapes(config).items()}
    weights = prepare(config, hf, parse_mesh("n300"), DType.bfloat16)
    allowed = np.where(rng.random(512) < 0.5, 1, 0).astype(np.uint32)
    words = (allowed.reshape(16, 32) << np.arange(32, dtype=np.uint32)).sum(-1).astype(np.uint32).view(np.int32)
    penalties = PenaltySpec(repetition_penalty=1.5, presence_penalty=0.5, frequency_penalty=0.5, logit_bias=((7, 4.0),))
    got = {}
    with ttnn_emu.installed():
        from ttdist.model.runner import MeshModelRunner

        for kind, trace in (("sim", False), ("ttnn", True)):
            runner = MeshModelRunner(weights, backend=kind, page_size=32, num_pages=16, max_batch=8, trace_decode=trace,
                                     logprobs_mode=mode)
            history, steps = list(range(3, 40)), []
            for step in range(3):
                spec = SamplingSpec(logprobs=3, penalties=penalties, history=tuple(history), num_prompt_tokens=37, step=step,
                                    allowed=words)
                out = runner.decode_logprobs(DecodeInput([history[-1]], [len(history) - 1], [[0, 1]], [spec], seq_ids=["a"]))
                steps.append(out.logprobs[0])
                history.append(out.tokens[0])
            got[kind] = steps
            runner.close()
    for a, b in zip(got["sim"], got["ttnn"]):
        assert a.token_id == b.token_id and allowed[a.token_id]
        assert abs(a.logprob - b.logprob) < 2e-2
        assert [v for _, v in a.top] == pytest.approx([v for _, v in b.top], abs=2e-2)
        if mode == "processed":   # greedy from the processed distribution: its best, and nothing masked in its top
            assert a.top[0][0] == a.token_id and all(allowed[t] for t, _ in a.top)
    if mode == "raw":   # the raw top holds tokens the grammar masks
        assert any(not allowed[t] for lp in got["sim"] for t, _ in lp.top)
