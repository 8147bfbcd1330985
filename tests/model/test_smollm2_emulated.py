"""Greedy tokens of the unchanged ttnn backend on emulated chips against transformers (float32):
SmolLM2-135M on an emulated N300 and T3000 through the engine (a prefix-cache hit, chunked
prefill, a preemption, idle slots), and on an emulated Galaxy with users in several column groups,
beside a tiny random Llama there, all with ``--dtype float32``: float32 weights and activations,
bfloat16 only where ttnn requires it (the KV cache and SDPA's inputs, the embedding table).
Tokens equal the reference's up to its first near-tie (top-2 gap < ``NEAR_TIE``);
traced and eager decode give the same tokens. Teacher-forced accuracy at the hardware presets
over 512 positions of ``data/lighthouse.txt`` (top-1 / top-5 agreement, as tt_transformers
measures it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.request import GenerationRequest, SamplingParams
from ttdist.engine.runner import DecodeInput, PrefillInput, SamplingSpec
from ttdist.mesh import ttnn_emu
from ttdist.model.runner import MeshModelRunner

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
# top-1 / top-5 agreement floors: tt_transformers' targets for its accuracy and performance modes are
# 97 / 99 and 90 / 98; SmolLM2-135M reaches top-5 but not top-1 there (on the simulator as well:
# accuracy 94.9 % top-1; the emulator's own error is the gap between the two, see bench_emulator.py)
FLOORS = {"accuracy": (0.93, 0.99), "performance": (0.80, 0.98)}


@pytest.fixture(scope="module")
def text_ids(smollm2, smollm2_hf):
    """512 positions of public-domain-style English text and the reference's top-1 token at each."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(smollm2)(TEXT.read_text()).input_ids[: POSITIONS + 1]
    assert len(ids) == POSITIONS + 1
    with torch.no_grad():
        want = smollm2_hf(torch.tensor([ids])).logits[0, :-1].argmax(-1).numpy()
    return ids[:-1], want


def agreement(logits: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 agreement with the reference's top-1 tokens (tt_transformers' accuracy test)."""
    top5 = np.argpartition(-logits, 5, axis=-1)[:, :5]
    return float((logits.argmax(-1) == want).mean()), float((top5 == want[:, None]).any(-1).mean())


@pytest.mark.parametrize("mesh", ["1x2", "8x4"])
@pytest.mark.parametrize("preset", ["accuracy", "performance"])
def test_teacher_forced_accuracy_at_the_hardware_presets(emulated, smollm2, text_ids, weight_cache, mesh, preset):
    ids, want = text_ids
    groups = 4 if mesh == "8x4" else 1
    pages = POSITIONS // PAGE
    runner = MeshModelRunner.from_checkpoint(smollm2, mesh=mesh, backend="ttnn", dtype=preset, page_size=PAGE,
                                             num_pages=(pages + 1) * groups, max_batch=groups, max_context=POSITIONS + PAGE,
                                             cache_dir=weight_cache)
    top1, top5 = agreement(runner.model.prefill_all_logits(ids, list(range(pages))), want)
    print(f"{preset} on {mesh}: top-1 {top1:.1%}, top-5 {top5:.1%} over {len(want)} positions")
    assert top1 >= FLOORS[preset][0] and top5 >= FLOORS[preset][1], (top1, top5)
