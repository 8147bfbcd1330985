"""EngineCore on the fake runner: steps, continuous batching, preemption, prefix reuse, aborts."""

from __future__ import annotations

import random

import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.errors import OverloadedError
from ttdist.engine.request import FinishReason, GenerationRequest, RequestOutput

from tests.support.engine_fakes import FakeRunner, reference_output
from tests.support.engine_requests import assert_pool_empty, request


def run(core: EngineCore, max_steps: int = 10_000) -> dict[str, list[RequestOutput]]:
    outputs: dict[str, list[RequestOutput]] = {}
    for _ in range(max_steps):
        if not core.has_work():
            return outputs
        for out in core.step():
            outputs.setdefault(out.request_id, []).append(out)
    raise AssertionError("engine did not drain")


def prompt(rng: random.Random, n: int, vocab: int = 64) -> list[int]:
    return [rng.randrange(1, vocab) for _ in range(n)]


def test_long_prompt_runs_in_page_aligned_chunks_between_decode_steps():
    runner = FakeRunner(page_size=4)
    core = EngineCore(runner, None, EngineConfig(prefill_chunk=8))
    core.add_request(request("a", list(range(1, 6)), max_tokens=4))
    core.step()                                            # a's prompt: one chunk, first token
    core.add_request(request("b", list(range(10, 30)), max_tokens=2))
    run(core)
    assert runner.calls == [
        ("prefill", 0, 5, True),
        ("prefill", 0, 8, False),                          # b, chunk 1
        ("decode", 1),                                     # a keeps decoding between b's chunks
        ("prefill", 8, 8, False),
        ("decode", 1),
        ("prefill", 16, 4, True),                          # b's last chunk samples its first token
        ("decode", 2),                                     # a's 4th token and b's 2nd: both done
    ]
    assert_pool_empty(core)


def test_batched_outputs_equal_each_request_alone():
    rng = random.Random(1)
    runner = FakeRunner(page_size=4, num_pages=128, max_batch=4)
    core = EngineCore(runner, None, EngineConfig(prefill_chunk=8, max_batch=4))
    prompts = {f"r{i}": prompt(rng, rng.randrange(1, 30)) for i in range(12)}
    lengths = {name: rng.randrange(1, 20) for name in prompts}
    for name, ids in prompts.items():
        core.add_request(request(name, ids, lengths[name]))
    outputs = run(core)
    for name, ids in prompts.items():
        final = outputs[name][-1]
        assert final.output_ids == reference_output(runner, ids, lengths[name])
        assert [t for o in outputs[name] for t in o.token_ids] == final.output_ids
        assert final.finish_reason is FinishReason.LENGTH
        assert final.usage.completion_tokens == lengths[name]
    assert max(c[1] for c in runner.calls if c[0] == "decode") == 4
    assert_pool_empty(core)


def test_repeated_prefix_reuses_pages_and_gives_the_same_output():
    runner = FakeRunner(page_size=4)
    core = EngineCore(runner, None, EngineConfig(prefill_chunk=8))
    ids = list(range(1, 20))
    core.add_request(request("first", ids))
    first = run(core)["first"][-1]
    core.add_request(request("second", ids))
    second = run(core)["second"][-1]
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == 16
    assert second.output_ids == first.output_ids == reference_output(runner, ids, 8)
    assert runner.calls[-8] == ("prefill", 16, 3, True)    # only the tail of the prompt ran
    stats = core.stats()
    assert stats.prefix_hit_rate == pytest.approx(16 / 38)
    assert stats.cached_pages > 0 and len(core.prefix_hashes()) == stats.cached_pages


def test_out_of_pages_preempts_the_newest_and_recomputes_it():
    runner = FakeRunner(page_size=4, num_pages=10)
    core = EngineCore(runner, None, EngineConfig(prefill_chunk=8, prefix_caching=False))
    prompts = {"old": list(range(1, 9)), "new": list(range(20, 28))}
    seqs = {name: core.add_request(request(name, ids, max_tokens=16)) for name, ids in prompts.items()}
    seen_waiting = 0
    outputs: dict[str, list[RequestOutput]] = {}
    while core.has_work():
        for out in core.step():
            outputs.setdefault(out.request_id, []).append(out)
        seen_waiting = max(seen_waiting, core.stats().waiting)
    assert core.stats().preemptions_total >= 1
    assert seen_waiting == 1
    for name, ids in prompts.items():
        assert outputs[name][-1].output_ids == reference_output(runner, ids, 16)
    prefilled = sum(c[2] for c in runner.calls if c[0] == "prefill")
    assert prefilled > 16, "the preempted request was prefilled again over prompt + generated tokens"
    assert seqs["old"].num_preemptions == 0 and seqs["new"].num_preemptions >= 1
    assert_pool_empty(core)


def test_waiting_queue_is_bounded():
    core = EngineCore(FakeRunner(), None, EngineConfig(max_waiting=2))
    core.add_request(request("a", [1]))
    core.add_request(request("b", [1]))
    with pytest.raises(OverloadedError, match="overloaded.*max_waiting=2"):
        core.add_request(request("c", [1]))
    core.step()                                            # a is admitted: room for one more
    core.add_request(request("c", [1]))
    assert core.stats().waiting == 2


def test_abort_is_idempotent_and_frees_pages_at_once():
    core = EngineCore(FakeRunner(page_size=4), None, EngineConfig(prefill_chunk=8))
    got: list[RequestOutput] = []
    core.add_request(request("a", list(range(1, 11)), max_tokens=50), sink=got.append)
    core.step()
    core.step()
    assert core.pool.num_free == core.pool.num_pages - 3
    assert core.abort("a") is True
    assert_pool_empty(core)
    assert core.abort("a") is False
    assert core.abort("never-seen") is False
    assert got[-1].finished and got[-1].finish_reason is FinishReason.ABORT
    assert got[-1].usage.completion_tokens == 1 and got[-1].output_ids == got[0].output_ids
    assert core.stats().requests_aborted_total == 1 and not core.has_work()


def test_abort_of_a_waiting_request():
    core = EngineCore(FakeRunner(), None, EngineConfig(max_batch=1))
    core.add_request(request("a", [1, 2]))
    core.add_request(request("b", [3, 4]))
    core.step()
    assert core.abort("b") is True
    assert core.stats().waiting == 0
    run(core)
    assert_pool_empty(core)


def test_eos_stop_token_ids_ignore_eos_and_max_tokens():
    runner = FakeRunner(vocab_size=64, eos_token_ids=(5,), next_token=lambda ctx: (ctx[-1] + 1) % 64)
    core = EngineCore(runner, None, EngineConfig())
    core.add_request(request("eos", [1], max_tokens=10))
    core.add_request(request("stop-id", [1], max_tokens=10, stop_token_ids=[3]))
    core.add_request(request("ignore", [1], max_tokens=6, ignore_eos=True))
    core.add_request(request("length", [10], max_tokens=3))
    out = {name: outs[-1] for name, outs in run(core).items()}
    assert (out["eos"].output_ids, out["eos"].finish_reason) == ([2, 3, 4, 5], FinishReason.EOS)
    assert (out["stop-id"].output_ids, out["stop-id"].finish_reason) == ([2, 3], FinishReason.STOP)
    assert (out["ignore"].output_ids, out["ignore"].finish_reason) == ([2, 3, 4, 5, 6, 7], FinishReason.LENGTH)
    assert (out["length"].output_ids, out["length"].finish_reason) == ([11, 12, 13], FinishReason.LENGTH)


def test_default_max_tokens_is_clipped_to_the_context_left():
    runner = FakeRunner(max_context=12)
    core = EngineCore(runner, None, EngineConfig(default_max_tokens=100))
    core.add_request(GenerationRequest("a", prompt_token_ids=list(range(1, 9))))
    final = run(core)["a"][-1]
    assert final.usage.completion_tokens == 4 and final.finish_reason is FinishReason.LENGTH


def test_seeded_sampling_gets_the_token_index_as_step():
    runner = FakeRunner()
    core = EngineCore(runner, None, EngineConfig())
    ids = [1, 2, 3]
    for name in ("x", "y"):
        core.add_request(request(name, ids, max_tokens=5, temperature=0.8, seed=11))
    out = run(core)
    assert out["x"][-1].output_ids == out["y"][-1].output_ids
    core.add_request(request("z", ids, max_tokens=5, temperature=0.8, seed=12))
    assert run(core)["z"][-1].output_ids != out["x"][-1].output_ids


def test_runner_batch_caps_the_engine_batch():
    runner = FakeRunner(max_batch=2)
    core = EngineCore(runner, None, EngineConfig(max_batch=32))
    for i in range(5):
        core.add_request(request(f"r{i}", [i + 1], max_tokens=4))
    run(core)
    assert core.max_batch == 2
    assert max(c[1] for c in runner.calls if c[0] == "decode") == 2


def test_prefill_chunk_must_be_page_aligned():
    with pytest.raises(ValueError, match="prefill_chunk=6 must be a positive multiple of the page size 4"):
        EngineCore(FakeRunner(page_size=4), None, EngineConfig(prefill_chunk=6))


@pytest.mark.parametrize(("seed", "groups", "pages"), [(0, 1, 40), (1, 1, 40), (0, 4, 80), (1, 4, 80)])
def test_200_random_requests_with_aborts_and_preemptions(seed: int, groups: int, pages: int):
    rng = random.Random(seed)
    runner = FakeRunner(
        vocab_size=64, page_size=4, num_pages=pages, max_batch=8, max_context=128, eos_token_ids=(0,), user_groups=groups
    )
    core = EngineCore(runner, None, EngineConfig(max_batch=8, prefill_chunk=8, max_waiting=1000))
    shared = prompt(rng, 12)
    specs = {}
    for i in range(200):
        ids = (shared if rng.random() < 0.4 else []) + prompt(rng, rng.randrange(1, 30))
        specs[f"r{i}"] = (ids, rng.randrange(1, 40))
    pending = list(specs)
    outputs: dict[str, list[RequestOutput]] = {}
    aborted: set[str] = set()
    while pending or core.has_work():
        for _ in range(rng.randrange(0, 4)):
            if pending:
                name = pending.pop(0)
                core.add_request(request(name, *specs[name]), sink=lambda o: outputs.setdefault(o.request_id, []).append(o))
        if rng.random() < 0.08:
            submitted = [name for name in specs if name not in pending]
            victim = rng.choice(submitted[-12:]) if submitted else "none"
            if core.abort(victim):
                aborted.add(victim)
        core.step()
    assert_pool_empty(core)
    stats = core.stats()
    assert stats.preemptions_total > 0 and stats.cached_tokens_total > 0 and len(aborted) > 3
    assert stats.requests_finished_total + stats.requests_aborted_total == 200
    for name, (ids, max_tokens) in specs.items():
        outs = outputs[name]
        assert all(o.request_id == name for o in outs)
        assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
        generated = [t for o in outs for t in o.token_ids]
        assert generated == outs[-1].output_ids
        ref = reference_output(runner, ids, max_tokens, eos=(0,))
        if name in aborted:
            assert outs[-1].finish_reason is FinishReason.ABORT and generated == ref[: len(generated)]
        else:
            assert generated == ref
            assert outs[-1].finish_reason is (FinishReason.EOS if ref[-1] == 0 else FinishReason.LENGTH)


def test_prompt_cached_up_to_its_last_token_starts_in_decode():
    runner = FakeRunner(page_size=4)
    core = EngineCore(runner, None, EngineConfig(prefill_chunk=8))
    core.add_request(request("a", list(range(1, 13)), max_tokens=1))
    run(core)
    runner.calls.clear()
    ids = list(range(1, 9)) + [40]
    core.add_request(request("b", ids, max_tokens=3))
    final = run(core)["b"][-1]
    assert runner.calls == [("decode", 1)] * 3                # no prefill: 8 of 9 prompt tokens cached
    assert final.usage.cached_tokens == 8
    assert final.output_ids == reference_output(runner, ids, 3)
