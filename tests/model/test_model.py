"""The whole model on the mesh against transformers, and its decode-step collectives."""

import numpy as np
import pytest
import torch

from tests.support.model_checks import MESHES, PROMPT, mesh_runner, pcc
from ttdist.engine.runner import DecodeInput, PrefillInput, SamplingSpec
from ttdist.mesh.accounting import all_gather_bytes, all_reduce_bytes, reduce_scatter_bytes
from ttdist.mesh.sampling import K
from ttdist.mesh.spec import Topology
from ttdist.model.runner import MeshModelRunner

@pytest.mark.parametrize("mesh", MESHES)
def test_logits_prefill_and_decode_match_transformers(mesh, tiny_ckpt, weight_cache, hf_tiny):
    runner = mesh_runner(tiny_ckpt, weight_cache, mesh)
    follow = [7, 8, 4242]
    with torch.no_grad():
        ref = hf_tiny(torch.tensor([PROMPT + follow])).logits[0].numpy()
    got = [runner.prefill_logits(PROMPT, 0, [0])[0]]
    for i, tok in enumerate(follow):
        got.append(runner.decode_logits([tok], [len(PROMPT) + i], [[0]])[0])
    for i, row in enumerate(got):
        assert pcc(row, ref[len(PROMPT) - 1 + i]) >= 0.999
        np.testing.assert_allclose(row, ref[len(PROMPT) - 1 + i], atol=1e-4)


@pytest.mark.parametrize("mesh", ["1x2", "8x4"])
def test_batched_decode_equals_each_user_alone(mesh, tiny_ckpt, weight_cache):
    prompts = [PROMPT[:3], PROMPT, PROMPT[::-1] * 3]
    batch = mesh_runner(tiny_ckpt, weight_cache, mesh)
    tables = [[0, 1], [8, 11], [30, 31]]  # on 8x4: user groups 0, 1 and 3 (8 pages each), one slot each
    firsts = [batch.prefill(PrefillInput(p, 0, t, True)) for p, t in zip(prompts, tables)]
    positions = [len(p) for p in prompts]
    batched = batch.decode_logits(firsts, positions, tables)
    for u, (p, first) in enumerate(zip(prompts, firsts)):
        alone = mesh_runner(tiny_ckpt, weight_cache, mesh)
        assert alone.prefill(PrefillInput(p, 0, [9, 10], True)) == first
        np.testing.assert_allclose(batched[u], alone.decode_logits([first], [len(p)], [[9, 10]])[0], atol=1e-5)


@pytest.mark.parametrize("mesh", ["1x1", "1x8", "2x4"])
def test_chunked_prefill_equals_one_shot(mesh, tiny_ckpt, weight_cache):
    prompt = (PROMPT * 6)[:77]
    one = mesh_runner(tiny_ckpt, weight_cache, mesh).prefill_logits(prompt, 0, [0, 1, 2])
    chunked = mesh_runner(tiny_ckpt, weight_cache, mesh)
    table = [5, 3, 7]
    assert chunked.prefill(PrefillInput(prompt[:32], 0, table[:1], False)) is None
    assert chunked.prefill(PrefillInput(prompt[32:64], 32, table[:2], False)) is None
    np.testing.assert_allclose(chunked.prefill_logits(prompt[64:], 64, table), one, atol=1e-5)


def test_sampling_on_the_mesh_is_seeded_per_request(tiny_ckpt, weight_cache):
    runner = mesh_runner(tiny_ckpt, weight_cache, "1x2")
    spec = SamplingSpec(temperature=0.8, top_k=50, top_p=0.9, seed=1234)
    a = runner.prefill(PrefillInput(PROMPT, 0, [0], True, spec))
    b = runner.prefill(PrefillInput(PROMPT, 0, [1], True, spec))
    assert a == b
    draws = {runner.prefill(PrefillInput(PROMPT, 0, [2], True, SamplingSpec(temperature=1.0, seed=s))) for s in range(12)}
    assert len(draws) > 1
    logits = runner.prefill_logits(PROMPT, 0, [3])[0]
    top5 = set(np.argsort(logits)[-5:].tolist())
    for s in range(8):
        assert runner.prefill(PrefillInput(PROMPT, 0, [4], True, SamplingSpec(temperature=5.0, top_k=5, seed=s))) in top5


def decode_step_ccl(runner, batch):
    be = runner.backend
    step = runner.info.num_pages // runner.info.user_groups if runner.info.user_groups > 1 else 1
    tables = [[i * step] for i in range(batch)]  # one user per group where there are groups
    for u in range(batch):
        runner.prefill(PrefillInput(PROMPT[: 2 + u], 0, tables[u], True))
    be.ccl.clear()
    runner.decode(DecodeInput([1] * batch, [2 + u for u in range(batch)], tables, [SamplingSpec()] * batch))
    return be.ccl


def test_decode_step_bytes_on_1x8_match_hand_computation(tiny_ckpt, weight_cache):
    runner = mesh_runner(tiny_ckpt, weight_cache, "1x8", max_batch=4)
    lay, b, d, line = runner.model.layout, 4, 8, Topology.LINE
    bf16, f32 = 2, 4
    # per layer: two norms (gather stats), two up-gathers of the residual, two reduce-scatters
    norm = all_gather_bytes(b * d * f32, d, line)
    gather = all_gather_bytes(b * lay.hidden * bf16, d, line)
    scatter = reduce_scatter_bytes(b * lay.hidden * bf16, d, line)
    per_layer = 2 * norm + 2 * gather + 2 * scatter
    # the head gathers each chip's top-32 sampling candidates (values and ids), never the logits
    head = norm + gather + 2 * all_gather_bytes(b * K * d * f32, d, line)
    ledger = decode_step_ccl(runner, b)
    assert ledger.count("all_gather") == 4 * 2 + 4 and ledger.count("reduce_scatter") == 2 * 2
    assert ledger.bytes_per_axis() == {1: pytest.approx(2 * per_layer + head)}


def test_decode_step_bytes_on_8x4_match_hand_computation(tiny_ckpt, weight_cache):
    runner = mesh_runner(tiny_ckpt, weight_cache, "8x4", max_batch=4)
    lay, b, line = runner.model.layout, 32, Topology.LINE  # with user groups the decode batch is a whole tile of rows
    assert runner.model.groups.rows == b
    bf16, f32 = 2, 4
    rows, cols = 8, 4
    norm = all_gather_bytes(b * cols * f32, cols, line)  # stats over the hidden axis (1)
    # each column attends for its own user group: the attention rows are gathered over the columns
    groups = all_gather_bytes(b * lay.n_q_local * lay.config.head_dim * bf16, cols, line)
    axis1 = (2 * norm + all_reduce_bytes(b * lay.qkv_local * bf16, cols, line) + 2 * all_reduce_bytes(b * lay.ff_local * bf16, cols, line)
             + groups)
    axis0 = 2 * all_reduce_bytes(b * lay.hidden_local * bf16, rows, line)  # WO and FF2 partials
    head1 = norm + all_reduce_bytes(b * lay.vocab_local * bf16, cols, line)
    head0 = 2 * all_gather_bytes(b * K * rows * f32, rows, line)  # sampling candidates over the vocab axis
    ledger = decode_step_ccl(runner, 4)
    assert ledger.count("all_reduce") == 2 * 5 + 1 and ledger.count("reduce_scatter") == 0
    assert ledger.count("all_gather") == 2 * (2 + 1) + 1 + 2  # norm stats, attention rows; head norm, candidates
    assert ledger.bytes_per_axis() == {0: pytest.approx(2 * axis0 + head0), 1: pytest.approx(2 * axis1 + head1)}


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["1x8", "8x4"])
def test_smollm2_greedy_32_tokens_equal_transformers_generate(mesh, smollm2, smollm2_hf, weight_cache):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    ids = tok("Once upon a time, in a small village,", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = smollm2_hf.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, ids.shape[1]:].tolist()
    # 8 pages: on 8x4 each of the 4 user groups holds 2 of them, and pages 0 and 1 are group 0's
    runner = MeshModelRunner.from_checkpoint(smollm2, mesh=mesh, dtype="float32", num_pages=8, page_size=32, max_batch=4,
                                             cache_dir=weight_cache)
    prompt, table = ids[0].tolist(), [0, 1]
    out = [runner.prefill(PrefillInput(prompt, 0, table, True))]
    for i in range(31):
        out += runner.decode(DecodeInput([out[-1]], [len(prompt) + i], [table], [SamplingSpec()]))
    assert out == ref


@pytest.fixture(scope="module")
def smollm2():
    from ttdist.model.smollm2 import materialize

    return materialize()


@pytest.fixture(scope="module")
def smollm2_hf(smollm2):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(smollm2).float().eval()


@pytest.mark.parametrize("mesh, padded", [("1x2", False), ("1x4", True), ("8x4", True)])
def test_uneven_heads_are_padded_exactly(mesh, padded, tiny_checkpoints, weight_cache):
    """6 query heads in 2 KV groups of 3: groups are padded to whole blocks per chip."""
    from transformers import LlamaForCausalLM

    ckpt = tiny_checkpoints(seed=3, hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=32,
                            intermediate_size=160, with_tokenizer=False)
    hf = LlamaForCausalLM.from_pretrained(ckpt).float().eval()
    runner = mesh_runner(ckpt, weight_cache, mesh)
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT + [42]])).logits[0].numpy()
    np.testing.assert_allclose(runner.prefill_logits(PROMPT, 0, [0])[0], ref[-2], atol=1e-4)
    np.testing.assert_allclose(runner.decode_logits([42], [len(PROMPT)], [[0]])[0], ref[-1], atol=1e-4)
    assert (-1 in sum(runner.model.layout.q_heads, [])) == padded


def test_decode_runs_the_fixed_slot_batch_and_uploads_only_deltas(tiny_ckpt, weight_cache):
    """The simulator runs the same trace-ready path: persistent inputs, stable slots, idle slots at -1."""
    runner = mesh_runner(tiny_ckpt, weight_cache, "1x2", max_batch=4)
    be, spec = runner.backend, [SamplingSpec()] * 2
    for u, n in enumerate((5, 9)):
        runner.prefill(PrefillInput(PROMPT[:n], 0, [u], False))
    a = runner.decode(DecodeInput([1, 2], [5, 9], [[0], [1]], spec, seq_ids=["x", "y"]))
    be.transfers.clear()
    b = runner.decode(DecodeInput([3, 4], [6, 10], [[0], [1]], spec, seq_ids=["x", "y"]))
    assert (be.transfers.uploads, be.transfers.upload_bytes) == (3, 3 * 4 * 4)  # ids, positions, rope rows
    assert (be.transfers.readbacks, be.transfers.readback_bytes) == (1, 4 * 4)
    assert runner.inputs.host["positions"].tolist() == [7 - 1, 11 - 1, -1, -1]
    # "y" alone keeps slot 1 and its token: idle slots change nothing
    alone = mesh_runner(tiny_ckpt, weight_cache, "1x2", max_batch=4)
    alone.prefill(PrefillInput(PROMPT[:9], 0, [1], False))
    assert alone.decode(DecodeInput([2], [9], [[1]], spec[:1], seq_ids=["y"])) == [a[1]]
    assert runner.decode(DecodeInput([b[1]], [11], [[1]], spec[:1], seq_ids=["y"])) and runner.slots.assign(["y"], 1) == [1]


def test_trace_decode_captures_once_and_replays_on_the_current_inputs(tiny_ckpt, weight_cache, monkeypatch):
    """The runner's trace sequence (eager compile pass, capture, replays) on a simulator that records
    the captured step and replays it: replayed steps read only the rewritten persistent inputs."""
    import ttdist.model.runner as runner_module
    from ttdist.mesh import MeshError
    from ttdist.mesh.sim.backend import SimBackend

    with pytest.raises(MeshError, match="cannot capture traces"):
        mesh_runner(tiny_ckpt, weight_cache, "1x2", trace_decode=True)

    class Captures(SimBackend):
        can_trace = True
        captured = replayed = 0

        def capture(self, step):
            Captures.captured += 1
            return step

        def replay(self, step):
            Captures.replayed += 1
            return step()

    monkeypatch.setattr(runner_module, "make_backend", lambda spec, kind, **kw: Captures(spec, **kw))
    traced = mesh_runner(tiny_ckpt, weight_cache, "1x2", max_batch=4)
    monkeypatch.undo()
    eager = mesh_runner(tiny_ckpt, weight_cache, "1x2", max_batch=4)
    assert traced.trace_decode and not eager.trace_decode
    outs = []
    for r in (traced, eager):
        tok = r.prefill(PrefillInput(PROMPT, 0, [0], True))
        seq = [tok]
        for i in range(4):
            seq += r.decode(DecodeInput([seq[-1]], [len(PROMPT) + i], [[0]], [SamplingSpec()], seq_ids=["u"]))
        outs.append(seq)
    assert outs[0] == outs[1]
    assert (Captures.captured, Captures.replayed) == (1, 3)  # step 1 eager, step 2 captured, then replays


@pytest.mark.parametrize("mesh", ["1x2", "8x4"])
def test_lm_head_chunked_per_device_gives_the_same_logits(mesh, tiny_ckpt, weight_cache):
    whole = mesh_runner(tiny_ckpt, weight_cache, mesh, lm_head_chunk=1 << 20)
    chunked = mesh_runner(tiny_ckpt, weight_cache, mesh, lm_head_chunk=4010, logits_dtype="float32")
    lay = chunked.model.layout
    assert len(whole.model.lm_head.chunks) == 1 and len(chunked.model.lm_head.chunks) == -(-lay.vocab_local // 4000)
    assert all(w.shape[-1] <= 4000 for w in chunked.model.lm_head.chunks)  # rounded down to whole tiles
    np.testing.assert_array_equal(chunked.prefill_logits(PROMPT, 0, [0]), whole.prefill_logits(PROMPT, 0, [0]))
