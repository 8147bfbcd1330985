"""Decode throughput with sampling features on vs off, same model, same run.

A batch of 32 users (prompts of 16 tokens, ``--tokens`` generated each, EOS ignored) decodes on the mesh
simulator (or the ttnn backend on emulated chips with ``--emulate``); each variant sets one
feature on every request. Variants run in turn, ``--repeats`` times, and the median decode
tokens/s of each is printed with its ratio to ``off`` (prefill steps are not counted). Figures
only: no timing is asserted anywhere.

    .venv/bin/python bench/bench_sampling.py                     # tiny random Llama on 1x2 (seconds)
    .venv/bin/python bench/bench_sampling.py --model smollm2 --tokens 16 --repeats 2   # SmolLM2-135M
    .venv/bin/python bench/bench_sampling.py --model smollm2 --runner --repeats 5   # the runner's steps alone
    .venv/bin/python bench/bench_sampling.py --emulate --mesh n300

Variants: ``off`` (greedy, nothing asked), ``logprobs5`` (top-5 logprobs on every request).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttdist.engine import EngineConfig, GenerationRequest, SamplingParams  # noqa: E402
from ttdist.engine.core import EngineCore  # noqa: E402

VARIANTS = {
    "off": {},
    "logprobs5": {"logprobs": 5},
}
BATCH, PROMPT, PAGE = 32, 16, 32


def checkpoint(model: str) -> Path:
    if model == "smollm2":
        from ttdist.model.smollm2 import materialize

        return materialize()
    from ttdist.model.testing import tiny_llama_checkpoint

    return tiny_llama_checkpoint(Path(tempfile.mkdtemp()) / "tiny", seed=0, with_tokenizer=False)


def decode_rate(core: EngineCore, vocab: int, sampling: dict, seed: int, tokens: int) -> float:
    """Decode tokens per second of one batch of ``BATCH`` requests (prefill steps left out)."""
    rng = random.Random(seed)
    for i in range(BATCH):
        core.add_request(GenerationRequest(f"s{seed}-{i}", prompt_token_ids=[rng.randrange(3, vocab) for _ in range(PROMPT)],
                                           sampling=SamplingParams(max_tokens=tokens, ignore_eos=True, **sampling)))
    tokens, seconds = 0, 0.0
    while core.has_work():
        decoding = core.stats().running == BATCH and not any(s.needs_prefill for s in core.scheduler.running)
        start = time.perf_counter()
        outputs = core.step()
        if decoding:
            seconds += time.perf_counter() - start
            tokens += len(outputs)
    return tokens / seconds


def step_rates(runner, steps: int) -> dict[str, float]:
    """``--runner``: decode steps of the runner alone, 32 users at fixed positions (no engine, no
    prefill: the quickest measurement of what logprobs add to a step), default and logprobs steps in turn."""
    from ttdist.engine.runner import DecodeInput, SamplingSpec

    pages = [[i] for i in range(BATCH)]
    inputs = {name: DecodeInput([5 + i for i in range(BATCH)], [PROMPT] * BATCH, pages,
                                [SamplingSpec(logprobs=sampling.get("logprobs"))] * BATCH, seq_ids=[str(i) for i in range(BATCH)])
              for name, sampling in VARIANTS.items()}
    seconds = {name: [] for name in VARIANTS}
    for step in range(steps + 1):
        for name, inp in inputs.items():
            start = time.perf_counter()
            runner.decode_logprobs(inp) if name != "off" else runner.decode(inp)
            if step:   # the first round builds every program
                seconds[name].append(time.perf_counter() - start)
    return {name: BATCH / statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=("tiny", "smollm2"))
    ap.add_argument("--mesh", default="1x2")
    ap.add_argument("--emulate", action="store_true", help="the ttnn backend on emulated chips instead of the simulator")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per user (default %(default)s)")
    ap.add_argument("--runner", action="store_true", help="time the runner's decode steps alone (no engine, no prefill)")
    args = ap.parse_args()

    if args.emulate:
        from ttdist.mesh import ttnn_emu

        ttnn_emu.install()
    from ttdist.model.runner import MeshModelRunner

    path = checkpoint(args.model)
    pages = BATCH * -(-(PROMPT + args.tokens) // PAGE) + BATCH
    runner = MeshModelRunner.from_checkpoint(path, mesh=args.mesh, backend="ttnn" if args.emulate else "sim",
                                             dtype="bfloat16" if args.emulate else "float32", page_size=PAGE,
                                             num_pages=pages, max_batch=BATCH, max_context=PROMPT + args.tokens + PAGE)
    backend = f"ttnn (emulated) {args.mesh}" if args.emulate else f"sim {args.mesh}"
    if args.runner:
        rates = step_rates(runner, args.repeats)
        print(f"model {args.model}, {backend}, batch {BATCH}, runner decode steps alone, median of {args.repeats}")
        for name, rate in rates.items():
            print(f"{name:>10}: {rate:9.1f} decode tokens/s  ({rate / rates['off']:.3f}x off)")
        return
    core = EngineCore(runner, None, EngineConfig(max_batch=BATCH, prefill_chunk=PAGE, prefix_caching=False))
    vocab = runner.info.vocab_size
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    decode_rate(core, vocab, {}, seed=-1, tokens=4)   # warm-up: every program of both steps built
    decode_rate(core, vocab, VARIANTS["logprobs5"], seed=-2, tokens=4)
    for repeat in range(args.repeats):
        for name, sampling in VARIANTS.items():
            rates[name].append(decode_rate(core, vocab, sampling, seed=repeat, tokens=args.tokens))
    base = statistics.median(rates["off"])
    print(f"model {args.model}, {backend}, batch {BATCH}, {args.tokens} tokens per user, median of {args.repeats}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:>10}: {rate:9.1f} decode tokens/s  ({rate / base:.3f}x off)")


if __name__ == "__main__":
    main()
