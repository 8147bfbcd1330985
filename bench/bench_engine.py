"""Replica engine throughput vs transformers ``generate`` with static padded batches.

Same model, same process, same run: 64 requests with mixed prompt and output lengths (greedy,
EOS ignored so every request produces exactly its ``max_tokens``). The engine runs them with
continuous batching on the mesh simulator (``MeshModelRunner``, sim backend); the baseline runs
them through ``LlamaForCausalLM.generate`` in arrival order, in static batches of the same size,
left-padded to the longest prompt and run to the longest output of each batch. Prints useful
generated tokens per second for each and their ratio, and how many outputs agree token for token.

    .venv/bin/python bench/bench_engine.py                 # SmolLM2-135M, fp32
    .venv/bin/python bench/bench_engine.py --model tiny    # a tiny random Llama (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttdist.engine import AsyncEngine, EngineConfig, GenerationRequest, SamplingParams  # noqa: E402


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    max_tokens: list[int]

    @property
    def useful_tokens(self) -> int:
        return sum(self.max_tokens)


def make_workload(n: int, vocab: int, seed: int, prompt_range: tuple[int, int], output_range: tuple[int, int]) -> Workload:
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(*prompt_range))] for _ in range(n)]
    return Workload(prompts, [rng.randint(*output_range) for _ in range(n)])


def make_chat_workload(n: int, vocab: int, seed: int) -> Workload:
    """Heavy-tailed lengths like chat traffic: log-normal prompts (median 64) and outputs (median 48)."""
    rng = random.Random(seed)

    def draw(median: float, lo: int, hi: int) -> int:
        return max(lo, min(hi, int(rng.lognormvariate(math.log(median), 1.0))))

    prompts = [[rng.randrange(3, vocab) for _ in range(draw(64, 8, 512))] for _ in range(n)]
    return Workload(prompts, [draw(48, 4, 512) for _ in range(n)])


def checkpoint(model: str) -> Path:
    if model == "smollm2":
        from ttdist.model.smollm2 import materialize

        return materialize()
    from ttdist.model.testing import tiny_llama_checkpoint

    return tiny_llama_checkpoint(Path(tempfile.mkdtemp()) / "tiny", seed=0, with_tokenizer=False)


def run_engine(path: Path, work: Workload, max_batch: int, page_size: int) -> tuple[float, list[list[int]]]:
    from ttdist.model.runner import MeshModelRunner

    context = max(len(p) + m for p, m in zip(work.prompts, work.max_tokens))
    pages = max_batch * -(-context // page_size) + max_batch
    runner = MeshModelRunner.from_checkpoint(
        path, mesh="1x1", backend="sim", dtype="float32", page_size=page_size, num_pages=pages, max_batch=max_batch
    )
    engine = AsyncEngine(runner, None, EngineConfig(max_batch=max_batch, max_waiting=len(work.prompts), prefill_chunk=256))

    async def one(i: int) -> list[int]:
        request = GenerationRequest(
            f"r{i}", prompt_token_ids=work.prompts[i],
            sampling=SamplingParams(max_tokens=work.max_tokens[i], ignore_eos=True),
        )
        async for out in engine.generate(request):
            if out.finished:
                return out.output_ids
        raise RuntimeError(f"request r{i} ended without a final output")

    async def all_requests() -> list[list[int]]:
        return list(await asyncio.gather(*(one(i) for i in range(len(work.prompts)))))

    engine.start()
    try:
        start = time.perf_counter()
        outputs = asyncio.run(all_requests())
        elapsed = time.perf_counter() - start
        stats = engine.stats()
    finally:
        engine.shutdown()
    print(f"  engine: {stats.prefill_steps_total} prefill steps, {stats.decode_steps_total} decode steps, "
          f"{stats.preemptions_total} preemptions, {pages} pages of {page_size}")
    return elapsed, outputs


def run_static_batches(path: Path, work: Workload, batch: int) -> tuple[float, list[list[int]]]:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    pad = 0
    outputs: list[list[int]] = []
    start = time.perf_counter()
    for first in range(0, len(work.prompts), batch):
        prompts = work.prompts[first:first + batch]
        limits = work.max_tokens[first:first + batch]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max(limits), min_new_tokens=max(limits),
                do_sample=False, pad_token_id=pad,
            )
        outputs.extend(row[width:width + n].tolist() for row, n in zip(out, limits))
    return time.perf_counter() - start, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--page-size", type=int, default=32)
    parser.add_argument("--lengths", choices=["uniform", "chat"], default="uniform",
                        help="uniform: --prompt-range / --output-range; chat: heavy-tailed log-normal lengths")
    parser.add_argument("--prompt-range", type=int, nargs=2, default=(8, 160))
    parser.add_argument("--output-range", type=int, nargs=2, default=(8, 128))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (1 is steadiest on a shared machine)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    path = checkpoint(args.model)
    vocab = 49152
    if args.lengths == "chat":
        work = make_chat_workload(args.requests, vocab, args.seed)
    else:
        work = make_workload(args.requests, vocab, args.seed, tuple(args.prompt_range), tuple(args.output_range))
    plens, olens = sorted(map(len, work.prompts)), sorted(work.max_tokens)
    print(f"model {args.model} ({path}), {args.requests} requests, batch {args.batch}, torch threads "
          f"{torch.get_num_threads()}, {args.lengths} lengths: prompts {plens[0]}-{plens[-1]} "
          f"(median {plens[len(plens) // 2]}), outputs {olens[0]}-{olens[-1]} (median {olens[len(olens) // 2]}), "
          f"{work.useful_tokens} tokens to generate")
    engine_s, engine_out = run_engine(path, work, args.batch, args.page_size)
    static_s, static_out = run_static_batches(path, work, args.batch)
    engine_tps = work.useful_tokens / engine_s
    static_tps = work.useful_tokens / static_s
    same = sum(a == b for a, b in zip(engine_out, static_out))
    print(f"engine (continuous batching, sim backend): {engine_tps:8.1f} tokens/s  ({engine_s:.1f} s)")
    print(f"transformers generate (static batches):    {static_tps:8.1f} tokens/s  ({static_s:.1f} s)")
    print(f"ratio engine / static: {engine_tps / static_tps:.2f}x (target >= 3x)")
    print(f"greedy outputs identical for {same}/{len(engine_out)} requests")


if __name__ == "__main__":
    main()
