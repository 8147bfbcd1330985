"""Multi-turn chat with the KV host tier off and on, same model, same run.

``conversations`` chats share one system prompt; each takes ``turns`` turns, a turn's prompt being
the whole conversation so far (system prompt, every earlier user message and answer) plus a new
user message. Arrivals are closed-loop per conversation: a chat's next turn arrives when its
previous answer is complete (after ``--think-ms``, default 0), every chat starting at once. The
device KV cache is sized to about a quarter of the working set (the system prompt's pages plus
every conversation's own pages at its last turn), never below what ``batch`` running chats need,
so a chat's earlier turns are evicted from the chips before its next turn comes. Without the tier
their prefix is prefilled again; with it the evicted pages come back from host memory.

Prints, per setting: TTFT p50 / p90 over every turn after the first and where that time went (mean
of: queue = arrival to admission; restore = admission to the restored pages written; prefill = the
request's own prompt chunks; other = waiting behind other users' steps and chunks between
admission and the first token), prompt tokens prefilled (computed on the mesh) and served from a
cache, generated tokens per second, the host tier's bytes and pages at the end, and whether the
outputs of the two settings are identical.

    .venv/bin/python bench/bench_kv_tiers.py                   # the issue's shape on a small random Llama
    .venv/bin/python bench/bench_kv_tiers.py --model smollm2   # SmolLM2-135M, fewer chats (minutes on a CPU)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttdist.engine import EngineConfig, GenerationRequest, SamplingParams  # noqa: E402
from ttdist.engine.core import EngineCore  # noqa: E402
from ttdist.engine.kv_tiers import KvTierConfig  # noqa: E402

PRESETS = {   # conversations, turns, system prompt, user message, answer, max batch (None: as many as the cache holds)
    "tiny": dict(conversations=32, turns=6, system=1024, user=64, answer=16, batch=None),
    "smollm2": dict(conversations=16, turns=4, system=256, user=64, answer=8, batch=None),
}
TINY_MODEL = dict(vocab_size=1024, max_position_embeddings=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)


@dataclass
class Result:
    ttft_s: list[float]
    prefilled: int
    cached: int
    generated: int
    wall_s: float
    outputs: dict[str, list[int]]
    host_bytes: int
    host_pages: int
    restored_pages: int
    parts: dict[str, float]            # mean seconds of TTFT per part (queue, restore, prefill, other)
    engine: dict[str, float]           # seconds the engine spent in prefill, decode, KV transfers and the rest
    pages: int
    working_set: int


def checkpoint(model: str) -> Path:
    if model == "smollm2":
        from ttdist.model.smollm2 import materialize

        return materialize()
    from ttdist.model.testing import tiny_llama_checkpoint

    return tiny_llama_checkpoint(Path(tempfile.mkdtemp()) / "tiny", seed=0, with_tokenizer=False, **TINY_MODEL)


def sizes(p: dict, page: int) -> tuple[int, int, int, int]:
    """(device pages, working set in pages, context, batch) for preset ``p``: a quarter of the working
    set (the shared system prompt's pages plus every chat's own pages at its last turn), never below
    the system prompt plus ``batch`` chats' own pages; ``batch`` None: as many chats as that holds."""
    final = p["system"] + p["turns"] * (p["user"] + p["answer"])
    shared = p["system"] // page
    own = -(-final // page) - shared
    working_set = shared + p["conversations"] * own
    batch = p["batch"] or max(1, (working_set // 4 - shared) // (own + 1))
    return max(working_set // 4, shared + batch * (own + 1)), working_set, final + page, batch


def run(path: Path, p: dict, page: int, host_bytes: int, seed: int, think_s: float = 0.0, cpu: bool = True) -> Result:
    """One setting. ``cpu``: every time (TTFT, its parts, throughput, think time) is this process's
    CPU time on one torch thread, so other work on the machine does not move the figures; an idle
    engine's wait for the next turn then costs nothing (the turn arrives at once)."""
    from ttdist.model.runner import MeshModelRunner

    pages, working_set, context, batch = sizes(p, page)
    p = dict(p, batch=batch)
    # the context the chats need, no more: decode attends over the page table's whole width
    runner = MeshModelRunner.from_checkpoint(path, mesh="1x1", backend="sim", dtype="float32", page_size=page,
                                             num_pages=pages, max_batch=p["batch"], max_context=context)
    prefilled = [0]
    spent = {"prefill": 0.0, "decode": 0.0, "kv transfers": 0.0}

    def timed(name: str, fn):
        def call(*args):
            begin = clock()
            try:
                return fn(*args)
            finally:
                spent[name] += clock() - begin
        return call

    clock = time.process_time if cpu else time.monotonic
    prefill = timed("prefill", runner.prefill)

    def counted(inp):
        prefilled[0] += len(inp.token_ids)
        return prefill(inp)

    runner.prefill = counted
    runner.decode = timed("decode", runner.decode)
    runner.read_kv_pages = timed("kv transfers", runner.read_kv_pages)
    runner.write_kv_pages = timed("kv transfers", runner.write_kv_pages)
    tiers = KvTierConfig(host_bytes=host_bytes)
    core = EngineCore(runner, None, EngineConfig(max_batch=p["batch"], max_waiting=p["conversations"], prefill_chunk=256,
                                                 kv_tiers=tiers), clock=clock)
    rng = random.Random(seed)
    vocab = runner.info.vocab_size
    system = [rng.randrange(3, vocab) for _ in range(p["system"])]
    users = {(c, t): [rng.randrange(3, vocab) for _ in range(p["user"])]
             for c in range(p["conversations"]) for t in range(p["turns"])}
    history = {c: list(system) for c in range(p["conversations"])}
    due = {c: core.clock() for c in range(p["conversations"])}   # when each chat's next turn arrives
    turn = {c: 0 for c in range(p["conversations"])}
    ttft, outputs, generated, timings = [], {}, 0, []

    def finished(c: int, out) -> None:
        nonlocal generated
        history[c] = history[c] + list(out.output_ids)
        outputs[out.request_id] = list(out.output_ids)
        generated += len(out.output_ids)
        if turn[c]:
            ttft.append(out.timings.ttft_s)
            timings.append(out.timings)
        turn[c] += 1
        if turn[c] < p["turns"]:
            due[c] = core.clock() + think_s

    start = core.clock()
    while due or core.has_work():
        now = core.clock()
        if cpu and due and not core.has_work():   # idle: skip ahead to the next arrival, costing nothing
            skip = max(0.0, min(due.values()) - now)
            due.update({c: at - skip for c, at in due.items()})
        for c in [c for c, at in due.items() if at <= now]:
            del due[c]
            history[c] = history[c] + users[c, turn[c]]
            core.add_request(GenerationRequest(f"c{c}t{turn[c]}", prompt_token_ids=history[c], traced=True,
                                               sampling=SamplingParams(max_tokens=p["answer"], ignore_eos=True)),
                             sink=lambda out, c=c: out.finished and finished(c, out))
        if core.has_work():
            core.step()
        elif due:
            time.sleep(max(0.0, min(due.values()) - core.clock()))
    wall = core.clock() - start
    stats = core.stats()
    core.close()
    return Result(ttft, prefilled[0], stats.cached_tokens_total, generated, wall, outputs, stats.kv_tiers.host.bytes,
                  stats.kv_tiers.host.pages, stats.kv_tiers.restored_pages, ttft_parts(timings),
                  dict(spent, rest=wall - sum(spent.values())), pages, working_set)


def ttft_parts(timings: list) -> dict[str, float]:
    """Mean seconds of each request's TTFT spent queued, restoring, in its own prefill chunks, and otherwise."""
    parts = {"queue": 0.0, "restore": 0.0, "prefill": 0.0, "other": 0.0}
    for t in timings:
        restore = max(0.0, t.restored_s - t.queue_s) if t.restored_s else 0.0
        prefill = sum(b - a for a, b, _ in t.prefill_chunks)
        parts["queue"] += t.queue_s
        parts["restore"] += restore
        parts["prefill"] += prefill
        parts["other"] += t.ttft_s - t.queue_s - restore - prefill
    return {k: v / max(1, len(timings)) for k, v in parts.items()}


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=tuple(PRESETS), default="tiny")
    ap.add_argument("--page-size", type=int, default=32)
    ap.add_argument("--host-bytes", type=int, default=2 * 2**30, help="the host tier's capacity (default 2 GiB)")
    ap.add_argument("--conversations", type=int, help="override the preset's number of chats")
    ap.add_argument("--turns", type=int, help="override the preset's turns per chat")
    ap.add_argument("--system", type=int, help="override the preset's system prompt length")
    ap.add_argument("--batch", type=int, help="override the preset's decode batch")
    ap.add_argument("--answer", type=int, help="override the preset's answer length")
    ap.add_argument("--think-ms", type=float, default=0.0, help="a chat's pause between an answer and its next turn")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: this process's CPU time on one torch thread (default: load elsewhere does not count); wall")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--on-first", action="store_true", help="run the tier-on setting first")
    args = ap.parse_args()
    p = dict(PRESETS[args.model])
    for key in ("conversations", "turns", "system", "batch", "answer"):
        if getattr(args, key):
            p[key] = getattr(args, key)
    path = checkpoint(args.model)
    cpu = args.clock == "cpu"
    if cpu:
        import torch

        torch.set_num_threads(1)
    pages, working_set, _, p["batch"] = sizes(p, args.page_size)
    print(f"{args.model}: {p['conversations']} chats x {p['turns']} turns, system prompt {p['system']} tokens, "
          f"user {p['user']}, answer {p['answer']}, think {args.think_ms:g} ms; {args.clock} time", flush=True)
    print(f"device cache {pages} pages of {args.page_size} tokens; working set {working_set} pages "
          f"({pages / working_set:.0%}); batch {p['batch']}", flush=True)
    print("warm-up (one chat, one turn, not counted):", flush=True)   # the first run in a process pays torch's warm-up
    run(path, dict(p, conversations=1, turns=1), args.page_size, 0, args.seed + 1)
    results = {}
    settings = [("tier off", 0), ("tier on", args.host_bytes)]
    for name, host in (settings[::-1] if args.on_first else settings):
        print(f"{name}:", flush=True)
        results[name] = run(path, p, args.page_size, host, args.seed, args.think_ms / 1e3, cpu)
        print(f"  {results[name].wall_s:.1f} s ({args.clock} time)", flush=True)
    print(f"\n{'':10}{'TTFT p50':>10}{'TTFT p90':>10}{'prefilled':>11}{'cached':>9}{'tok/s':>8}{'host MiB':>10}{'restored':>10}")
    for name, r in results.items():
        print(f"{name:10}{quantile(r.ttft_s, 0.5) * 1e3:>8.0f}ms{quantile(r.ttft_s, 0.9) * 1e3:>8.0f}ms{r.prefilled:>11}"
              f"{r.cached:>9}{r.generated / r.wall_s:>8.1f}{r.host_bytes / 2**20:>10.1f}{r.restored_pages:>10}")
    print("\nmean TTFT parts (ms):  " + "  ".join(f"{k:>8}" for k in ("queue", "restore", "prefill", "other")))
    for name, r in results.items():
        print(f"{name:22}" + "  ".join(f"{v * 1e3:>8.1f}" for v in r.parts.values()))
    print("\nengine time (s):       " + "  ".join(f"{k:>12}" for k in next(iter(results.values())).engine))
    for name, r in results.items():
        print(f"{name:22}" + "  ".join(f"{v:>12.2f}" for v in r.engine.values()))
    off, on = results["tier off"], results["tier on"]
    print(f"\nTTFT p50 {quantile(off.ttft_s, 0.5) / quantile(on.ttft_s, 0.5):.2f}x lower with the tier; "
          f"prefill tokens {100 * (1 - on.prefilled / off.prefilled):.0f}% fewer; "
          f"throughput {(on.generated / on.wall_s) / (off.generated / off.wall_s):.2f}x; "
          f"outputs identical: {on.outputs == off.outputs}")


if __name__ == "__main__":
    main()
