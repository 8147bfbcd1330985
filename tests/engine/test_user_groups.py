"""EngineCore with user groups (a Galaxy's column groups): placement, slots, preemption, stats.

The fake runner checks on every call that a page table lies in one group's range and that no
group decodes more than ``max_batch // user_groups`` users.
"""

from __future__ import annotations

import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.errors import UserGroupsError
from ttdist.engine.sequence import SequenceStatus

from tests.support.engine_fakes import FakeRunner, reference_output
from tests.support.engine_requests import assert_pool_empty, request

Placement = tuple[str, int, tuple[int, ...]]


def drain(core: EngineCore, on_step=None, max_steps: int = 10_000) -> tuple[list[Placement], dict[str, list[int]]]:
    """Step until idle; every admission as (request, group, its page ids then), and each output."""
    placements: list[Placement] = []
    outputs: dict[str, list[int]] = {}
    allocate = core.pool.allocate

    def recorded(seq, group: int = 0) -> int:
        cached = allocate(seq, group)
        placements.append((seq.request_id, group, tuple(seq.page_table)))
        return cached

    core.pool.allocate = recorded
    try:
        for _ in range(max_steps):
            if not core.has_work():
                return placements, outputs
            for out in core.step():
                outputs[out.request_id] = list(out.output_ids)
            if on_step is not None:
                on_step(core, placements)
    finally:
        del core.pool.allocate
    raise AssertionError("engine did not drain")


R0 = list(range(1, 10))                 # 9 tokens: 2 full pages + 1
R1 = list(range(20, 25))                # 5 tokens: 1 full page + 1


def test_admission_picks_the_group_by_prefix_hits_then_free_pages_then_id():
    runner = FakeRunner(page_size=4, num_pages=32, max_batch=8, user_groups=4)   # 8 pages, 2 slots a group
    core = EngineCore(runner, None, EngineConfig(max_batch=8, prefill_chunk=16))
    prompts = {
        "r0": R0,                       # all alike: group 0
        "r1": R1,                       # most free pages: 1, 2, 3 tie, lowest id
        "r2": list(range(30, 35)),
        "r3": list(range(40, 44)),      # 1 page: group 3 keeps the most free
        "r4": R0[:8] + [50, 51],        # r0's 2 cached pages beat every free page count
        "r5": R1[:4] + [51, 52, 53],    # r1's cached page (group 1: 6 free) beats group 3 (7 free)
        "r6": list(range(57, 62)),      # groups 0, 1 full: group 3 has the most free pages
        "r7": R0[:8] + [54, 55],        # cached in group 0, which is full: group 2, computed again
        "r8": [56],                     # no slot anywhere: waits for one
    }
    seqs = {name: core.add_request(request(name, ids, max_tokens=3)) for name, ids in prompts.items()}
    snapshot = {}

    def when_all_admitted(core: EngineCore, placements: list[Placement]) -> None:
        if len(placements) == 8 and not snapshot:
            snapshot["stats"] = core.stats()

    placements, outputs = drain(core, when_all_admitted)
    assert placements == [
        ("r0", 0, (0, 1, 2)), ("r1", 1, (8, 9)), ("r2", 2, (16, 17)), ("r3", 3, (24,)),
        ("r4", 0, (0, 1, 3)), ("r5", 1, (8, 10)), ("r6", 3, (25, 26)), ("r7", 2, (18, 19, 20)),
        ("r8", 0, (2,)),                # all free again: group 0, the front of its free queue
    ]
    assert [seqs[n].num_cached_tokens for n in prompts] == [0, 0, 0, 0, 8, 4, 0, 0, 0]
    stats = snapshot["stats"]
    assert (stats.user_groups, stats.running_per_group, stats.free_pages_per_group) == (4, [2, 2, 2, 2], [4, 5, 3, 5])
    assert (stats.free_pages, stats.total_pages, stats.running, stats.waiting) == (17, 32, 8, 1)
    for name, ids in prompts.items():
        assert outputs[name] == reference_output(runner, ids, 3)
    assert core.stats().free_pages_per_group == [8, 8, 8, 8]
    assert_pool_empty(core)


def test_each_group_runs_at_most_its_slots_and_the_queue_stays_fifo():
    runner = FakeRunner(page_size=4, num_pages=8, max_batch=4, user_groups=2)    # 4 pages, 2 slots a group
    core = EngineCore(runner, None, EngineConfig(max_batch=4, prefill_chunk=16))
    prompts = {
        "a": list(range(1, 9)),         # 2 pages, grows to 3: group 0, 1 page left free
        "b": list(range(20, 33)),       # 4 pages at the end: group 1
        "c": list(range(40, 55)),       # 4 pages: no group has them until b ends
        "d": [60],                      # fits group 0 all along, yet waits behind c
    }
    max_tokens = {"a": 4, "b": 3, "c": 1, "d": 2}
    for name, ids in prompts.items():
        core.add_request(request(name, ids, max_tokens=max_tokens[name]))
    running_counts: list[list[int]] = []
    placements, outputs = drain(core, lambda core, _: running_counts.append(core.stats().running_per_group))
    assert [(name, group) for name, group, _ in placements] == [("a", 0), ("b", 1), ("c", 1), ("d", 1)]
    assert max(max(counts) for counts in running_counts) <= 2
    for name, ids in prompts.items():
        assert outputs[name] == reference_output(runner, ids, max_tokens[name])
    assert core.scheduler.num_preemptions == 0
    assert_pool_empty(core)


def test_slot_limit_sends_a_prefix_hit_to_another_group_which_computes_it_again():
    runner = FakeRunner(page_size=4, num_pages=16, max_batch=2, user_groups=2)   # 8 pages, 1 slot a group
    core = EngineCore(runner, None, EngineConfig(max_batch=2, prefill_chunk=16))
    ids = list(range(1, 10))
    first = core.add_request(request("first", ids, max_tokens=8))
    core.step()                                             # first's prompt: computed and cached in group 0
    assert first.group == 0
    second = core.add_request(request("second", ids, max_tokens=2))
    placements, outputs = drain(core)
    assert [(name, group) for name, group, _ in placements] == [("second", 1)]
    assert (first.num_cached_tokens, second.num_cached_tokens) == (0, 0)   # group 0's cache is not group 1's
    assert runner.calls[:2] == [("prefill", 0, 9, True), ("prefill", 0, 9, True)]
    third = core.add_request(request("third", ids, max_tokens=2))
    placements, _ = drain(core)
    assert [(name, group) for name, group, _ in placements] == [("third", 0)]   # cached in both: lowest id
    assert third.num_cached_tokens == 8
    assert outputs["first"] == reference_output(runner, ids, 8)
    assert core.stats().cached_pages == 6 and len(core.prefix_hashes()) == 4   # first's 2 blocks in both groups


def test_out_of_pages_preempts_the_newest_user_of_the_same_group_only():
    runner = FakeRunner(page_size=4, num_pages=12, max_batch=4, user_groups=2)   # 6 pages, 2 slots a group
    core = EngineCore(runner, None, EngineConfig(max_batch=4, prefill_chunk=8))
    prompts = {
        "a": list(range(1, 9)),                 # group 0
        "x": list(range(1, 5)) + [30, 31, 32, 33],   # a's first page cached in group 0: group 0
        "b": list(range(50, 58)),               # group 0 has no slot: group 1, the newest of all
    }
    seqs = {name: core.add_request(request(name, ids, max_tokens=12)) for name, ids in prompts.items()}
    b_running_when_x_preempted = []

    def watch(core: EngineCore, _) -> None:
        if seqs["x"].status is SequenceStatus.WAITING and seqs["x"].num_preemptions and not b_running_when_x_preempted:
            b_running_when_x_preempted.append(seqs["b"].status is SequenceStatus.RUNNING)

    placements, outputs = drain(core, watch)
    assert placements == [
        ("a", 0, (0, 1)), ("x", 0, (0, 2)), ("b", 1, (6, 7)),
        ("x", 0, (0, 2, 4, 5)),                 # back where its own pages are still cached
    ]
    assert [seqs[n].num_preemptions for n in ("a", "x", "b")] == [0, 1, 0]   # a and x need 9 pages of 6
    assert b_running_when_x_preempted == [True]
    assert core.stats().preemptions_total == 1
    for name, ids in prompts.items():
        assert outputs[name] == reference_output(runner, ids, 12)
    assert_pool_empty(core)


@pytest.mark.parametrize(
    ("pages", "batch", "message"),
    [(32, 6, "max_batch=6 is not divisible by user_groups=4"), (30, 8, "num_pages=30 is not divisible by user_groups=4")],
)
def test_groups_that_do_not_split_the_batch_or_the_pages_are_refused(pages: int, batch: int, message: str):
    with pytest.raises(UserGroupsError, match=message):
        EngineCore(FakeRunner(num_pages=pages, max_batch=batch, user_groups=4), None, EngineConfig())


def test_one_group_reports_as_before():
    core = EngineCore(FakeRunner(num_pages=64, max_batch=8), None, EngineConfig())
    stats = core.stats()
    assert (stats.user_groups, stats.free_pages_per_group, stats.running_per_group) == (1, [64], [0])
    assert core.limits.context_window == 256


def test_context_window_is_one_group_s_pages():
    core = EngineCore(FakeRunner(page_size=4, num_pages=32, max_batch=8, user_groups=4), None, EngineConfig(prefill_chunk=8))
    assert core.limits.context_window == 32                   # 8 pages of 4 tokens: a user never spans groups
