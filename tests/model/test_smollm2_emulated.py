"""Greedy tokens of the unchanged ttnn backend on emulated chips against transformers (float32):
SmolLM2-135M on an emulated N300 and T3000 through the engine (a prefix-cache hit, chunked
prefill, a preemption, idle slots), and on an emulated Galaxy with users in several column groups,
beside a tiny random Llama there, all with ``--dtype float32``: float32 weights and activations,
bfloat16 only where ttnn requires it (the KV cache and SDPA's inputs, the embedding table).
Tokens equal the reference's up to its first near-tie (top-2 gap < ``NEAR_TIE``);
traced and eager decode give the same tokens. Teacher-forced accuracy at the hardware presets
over 512 positions of ``data/lighthouse.txt`` (top-1 / top-5 agreement with transformers, counted as
tt_transformers counts it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.request import GenerationRequest, SamplingParams
from ttdist.engine.runner import DecodeInput, PrefillInput, SamplingSpec
from ttdist.mesh import ttnn_emu
from ttdist.model.runner import MeshModelRunner
from ttdist.model.token_accuracy import reference_top5, token_accuracy

# a near-tie of the reference: top-2 logit gap below this
NEAR_TIE = 0.05
PAGE = 32


@pytest.fixture(scope="module")
def smollm2():
    from ttdist.model.smollm2 import materialize

    return materialize()


@pytest.fixture(scope="module")
def smollm2_hf(smollm2):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(smollm2).float().eval()


@pytest.fixture(scope="module")
def prompts(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    shared = tok("The old lighthouse keeper climbed the narrow stone stairs every evening to light the great lamp, "
                 "and all through the long winter nights the fishing boats sailed safely past the rocks.").input_ids
    assert len(shared) > PAGE  # the first page is cached and shared
    return [shared + tok(" One night, a storm").input_ids,
            shared + tok(" The keeper had a cat named").input_ids,
            tok("Water boils at one hundred degrees Celsius at sea level, but on a high mountain it boils at").input_ids,
            tok("def fibonacci(n):").input_ids]


@pytest.fixture
def emulated():
    with ttnn_emu.installed() as ttnn:
        yield ttnn


def reference(hf, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy tokens of transformers (float32) and the top-2 logit gap of each step."""
    ids, gaps = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = hf(torch.tensor([ids])).logits[0, -1]
            top = torch.topk(logits, 2).values
            gaps.append(float(top[0] - top[1]))
            ids.append(int(logits.argmax()))
    return ids[len(prompt):], gaps


def assert_greedy_matches(got: list[int], want: list[int], gaps: list[float], label: str) -> None:
    """Equal tokens, except after the reference's first near-tie."""
    assert len(got) == len(want), label
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    if first is not None:
        assert min(gaps[: first + 1]) < NEAR_TIE, \
            f"{label}: token {first} differs ({got[first]} != {want[first]}) with no near-tie before it"


def run_engine(runner, prompts: list[list[int]], n: int) -> tuple[dict, object]:
    """Four requests through the engine: 32-token prefill chunks, prefix caching, five pages (the
    third request needs its second page mid-decode, when the fourth holds the last one)."""
    core = EngineCore(runner, None, EngineConfig(max_batch=runner.info.max_batch, prefill_chunk=PAGE))
    for i, prompt in enumerate(prompts):
        core.add_request(GenerationRequest(f"r{i}", prompt_token_ids=prompt, sampling=SamplingParams(max_tokens=n, ignore_eos=True)))
    out = {}
    while core.has_work():
        for o in core.step():
            if o.finished:
                out[o.request_id] = o.output_ids
    return out, core.stats()


@pytest.mark.parametrize("mesh,trace", [("1x2", True), ("1x8", False)])
def test_smollm2_through_the_engine_on_n300_and_t3000(emulated, smollm2, smollm2_hf, prompts, weight_cache, mesh, trace):
    n = 24
    runner = MeshModelRunner.from_checkpoint(smollm2, mesh=mesh, backend="ttnn", dtype="float32",
                                             page_size=PAGE, num_pages=5, max_batch=8, max_context=256, cache_dir=weight_cache,
                                             trace_decode=trace)
    out, stats = run_engine(runner, prompts, n)
    runner.close()
    assert stats.preemptions_total > 0 and stats.cached_tokens_total > 0
    for i, prompt in enumerate(prompts):
        want, gaps = reference(smollm2_hf, prompt, n)
        assert_greedy_matches(out[f"r{i}"], want, gaps, f"{mesh} r{i}")


def decode_users(runner, prompts: list[list[int]], tables: list[list[int]], n: int) -> list[list[int]]:
    """Each user prefilled through its page table, then ``n - 1`` greedy decode steps in one batch."""
    out = [[runner.prefill(PrefillInput(p, 0, t, True))] for p, t in zip(prompts, tables)]
    keys = [f"u{i}" for i in range(len(prompts))]
    for step in range(n - 1):
        positions = [len(p) + step for p in prompts]
        ids = runner.decode(DecodeInput([o[-1] for o in out], positions, tables, [SamplingSpec()] * len(prompts), seq_ids=keys))
        for o, t in zip(out, ids):
            o.append(t)
    runner.close()
    return out


def test_tiny_llama_on_galaxy_user_groups_traced_and_eager(emulated, tiny_ckpt, hf_tiny, weight_cache):
    """Three users in column groups 0, 1 and 3 (8 pages each) of an 8-slot batch, 32 tokens each."""
    prompts = [list(range(5, 45)), list(range(300, 317)), list(range(1000, 1070))]
    tables = [[0, 1, 2], [9, 10], [24, 25, 26, 27]]
    runs = [decode_users(MeshModelRunner.from_checkpoint(tiny_ckpt, mesh="8x4", backend="ttnn", dtype="float32",
                                                        page_size=PAGE, num_pages=32, max_batch=8, max_context=256, cache_dir=weight_cache,
                                                        trace_decode=trace), prompts, tables, 32) for trace in (False, True)]
    assert runs[0] == runs[1]
    for i, prompt in enumerate(prompts):
        want, gaps = reference(hf_tiny, prompt, 32)
        assert_greedy_matches(runs[1][i], want, gaps, f"tiny 8x4 u{i}")


def test_smollm2_on_galaxy_user_groups(emulated, smollm2, smollm2_hf, prompts, weight_cache):
    """Three users in column groups 0, 2 and 3, 8 tokens each, traced."""
    tables = [[0, 1], [4, 5], [6, 7]]  # 8 pages: 2 per group
    runner = MeshModelRunner.from_checkpoint(smollm2, mesh="8x4", backend="ttnn", dtype="float32", page_size=PAGE,
                                             num_pages=8,
                                             max_batch=8, max_context=128, cache_dir=weight_cache, trace_decode=True)
    out = decode_users(runner, prompts[1:], tables, 8)
    for i, prompt in enumerate(prompts[1:]):
        want, gaps = reference(smollm2_hf, prompt, 8)
        assert_greedy_matches(out[i], want, gaps, f"smollm2 8x4 u{i}")


TEXT = Path(__file__).parent / "data" / "lighthouse.txt"
POSITIONS = 512
# top-1 / top-5 floors (tt_transformers' counting, ttdist.model.token_accuracy). Its targets, 97 / 99
# (accuracy) and 90 / 98 (performance), are its 8B-class figures; its smallest model, Llama-3.2-1B,
# reaches 87 / 98 and 79 / 97 on N300 at these presets (PERF.md). SmolLM2-135M measures 93.8 / 100
# and 81.4 / 97.9 here (emulated N300), with a bf16 ceiling: transformers itself in bfloat16 agrees
# 97.3 % top-1 with its float32 run on this text, float32 weights with the backend's bf16 activations
# 97.9 % (docs/hardware.md, bench/bench_accuracy.py). The floors leave ~2 points for the mesh.
FLOORS = {"accuracy": (0.92, 0.99), "performance": (0.78, 0.96)}


@pytest.fixture(scope="module")
def text_ids(smollm2, smollm2_hf):
    """512 positions of English prose and transformers' (float32) top-5 tokens at each."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(smollm2)(TEXT.read_text()).input_ids[:POSITIONS]
    assert len(ids) == POSITIONS
    with torch.no_grad():
        logits = smollm2_hf(torch.tensor([ids])).logits[0].numpy()
    return ids, reference_top5(logits)


@pytest.mark.slow  # four 512-token prefills of the real model on emulated chips: ~2.5 CPU-minutes
@pytest.mark.parametrize("mesh", ["1x2", "8x4"])
@pytest.mark.parametrize("preset", ["accuracy", "performance"])
def test_teacher_forced_accuracy_at_the_hardware_presets(emulated, smollm2, text_ids, weight_cache, mesh, preset):
    """Every position of one prefill predicts the next token from the true text before it; the
    greedy token scores top-1 if it is transformers' top-1 and top-5 if it is among its top-5."""
    ids, want = text_ids
    groups = 4 if mesh == "8x4" else 1
    pages = POSITIONS // PAGE
    runner = MeshModelRunner.from_checkpoint(smollm2, mesh=mesh, backend="ttnn", dtype=preset, page_size=PAGE,
                                             num_pages=(pages + 1) * groups, max_batch=groups, max_context=POSITIONS + PAGE,
                                             cache_dir=weight_cache)
    got = token_accuracy(runner.model.prefill_all_logits(ids, list(range(pages))).argmax(-1), want)
    print(f"{preset} on {mesh}: {got}")
    assert got.top1 >= FLOORS[preset][0] and got.top5 >= FLOORS[preset][1], got
