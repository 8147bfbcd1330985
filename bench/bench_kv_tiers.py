"""Multi-turn chat with the KV host tier off and on, same model, same run.

``conversations`` chats share one system prompt; each takes ``turns`` turns, a turn's prompt being
the whole conversation so far (system prompt, every earlier user message and answer) plus a new
user message. A round sends every conversation's next turn at once and waits for the answers. The
device KV cache is sized to about a quarter of the working set (every conversation's pages at its
last turn), so earlier turns are evicted from the chips before their next turn comes. Without the
tier their prefix is prefilled again; with it the evicted pages come back from host memory.

Prints, per setting: TTFT p50 / p90 over every turn after the first, prompt tokens prefilled
(computed on the mesh) and served from a cache, generated tokens per second, the host tier's
bytes and pages at the end, and whether the outputs of the two settings are identical.

    .venv/bin/python bench/bench_kv_tiers.py                   # a small random Llama (about a minute)
    .venv/bin/python bench/bench_kv_tiers.py --model smollm2   # SmolLM2-135M (minutes on a CPU)
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

PRESETS = {   # conversations, turns, system prompt, user message, answer, max batch
    "tiny": dict(conversations=6, turns=6, system=256, user=64, answer=8, batch=1),
    "smollm2": dict(conversations=6, turns=4, system=512, user=48, answer=8, batch=1),
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


def checkpoint(model: str) -> Path:
    if model == "smollm2":
        from ttdist.model.smollm2 import materialize

        return materialize()
    from ttdist.model.testing import tiny_llama_checkpoint

    return tiny_llama_checkpoint(Path(tempfile.mkdtemp()) / "tiny", seed=0, with_tokenizer=False, **TINY_MODEL)


def run(path: Path, p: dict, page: int, host_bytes: int, seed: int) -> Result:
    from ttdist.model.runner import MeshModelRunner

    final = p["system"] + p["turns"] * (p["user"] + p["answer"])
    per_chat = -(-final // page) - p["system"] // page
    working_set = p["system"] // page + p["conversations"] * per_chat
    pages = max(working_set // 4, p["batch"] * -(-(final + page) // page))
    # the context the chats need, no more: decode attends over the page table's whole width
    runner = MeshModelRunner.from_checkpoint(path, mesh="1x1", backend="sim", dtype="float32", page_size=page,
                                             num_pages=pages, max_batch=p["batch"], max_context=final + page)
    prefilled = [0]
    prefill = runner.prefill

    def counted(inp):
        prefilled[0] += len(inp.token_ids)
        return prefill(inp)

    runner.prefill = counted
    tiers = KvTierConfig(host_bytes=host_bytes)
    core = EngineCore(runner, None, EngineConfig(max_batch=p["batch"], max_waiting=p["conversations"], prefill_chunk=256,
                                                 kv_tiers=tiers))
    rng = random.Random(seed)
    vocab = runner.info.vocab_size
    system = [rng.randrange(3, vocab) for _ in range(p["system"])]
    history = {c: list(system) for c in range(p["conversations"])}
    ttft, outputs, generated = [], {}, 0
    start = time.perf_counter()
    for turn in range(p["turns"]):
        finals = {}
        for c in range(p["conversations"]):
            prompt = history[c] + [rng.randrange(3, vocab) for _ in range(p["user"])]
            history[c] = prompt
            core.add_request(GenerationRequest(f"c{c}t{turn}", prompt_token_ids=prompt,
                                               sampling=SamplingParams(max_tokens=p["answer"], ignore_eos=True)),
                             sink=lambda out, c=c: out.finished and finals.__setitem__(c, out))
        while core.has_work():
            core.step()
        for c, out in finals.items():
            history[c] = history[c] + list(out.output_ids)
            outputs[out.request_id] = list(out.output_ids)
            generated += len(out.output_ids)
            if turn:
                ttft.append(out.timings.ttft_s)
    wall = time.perf_counter() - start
    stats = core.stats()
    core.close()
    print(f"  device cache {pages} pages of {page} tokens; working set {working_set} pages", flush=True)
    return Result(ttft, prefilled[0], stats.cached_tokens_total, generated, wall, outputs, stats.kv_tiers.host.bytes,
                  stats.kv_tiers.host.pages, stats.kv_tiers.restored_pages)


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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--on-first", action="store_true", help="run the tier-on setting first")
    args = ap.parse_args()
    p = dict(PRESETS[args.model])
    for key in ("conversations", "turns", "system", "batch"):
        if getattr(args, key):
            p[key] = getattr(args, key)
    path = checkpoint(args.model)
    print(f"{args.model}: {p['conversations']} chats x {p['turns']} turns, system prompt {p['system']} tokens, "
          f"user {p['user']}, answer {p['answer']}, batch {p['batch']}", flush=True)
    print("warm-up (one chat, one turn, not counted):", flush=True)   # the first run in a process pays torch's warm-up
    run(path, dict(p, conversations=1, turns=1), args.page_size, 0, args.seed + 1)
    results = {}
    settings = [("tier off", 0), ("tier on", args.host_bytes)]
    for name, host in (settings[::-1] if args.on_first else settings):
        print(f"{name}:", flush=True)
        results[name] = run(path, p, args.page_size, host, args.seed)
        print(f"  {results[name].wall_s:.1f} s", flush=True)
    print(f"\n{'':10}{'TTFT p50':>10}{'TTFT p90':>10}{'prefilled':>11}{'cached':>9}{'tok/s':>8}{'host MiB':>10}{'restored':>10}")
    for name, r in results.items():
        print(f"{name:10}{quantile(r.ttft_s, 0.5) * 1e3:>8.0f}ms{quantile(r.ttft_s, 0.9) * 1e3:>8.0f}ms{r.prefilled:>11}"
              f"{r.cached:>9}{r.generated / r.wall_s:>8.1f}{r.host_bytes / 2**20:>10.1f}{r.restored_pages:>10}")
    off, on = results["tier off"], results["tier on"]
    print(f"\nTTFT p50 {quantile(off.ttft_s, 0.5) / quantile(on.ttft_s, 0.5):.2f}x lower with the tier; "
          f"prefill tokens {100 * (1 - on.prefilled / off.prefilled):.0f}% fewer; "
          f"throughput {(on.generated / on.wall_s) / (off.generated / off.wall_s):.2f}x; "
          f"outputs identical: {on.outputs == off.outputs}")


if __name__ == "__main__":
    main()
