"""Decode throughput with a JSON schema on every request vs none, batch 32, same run.

The same 32 prompts decode 64 tokens each on the mesh simulator twice: free (EOS ignored) and
with a JSON schema that cannot be complete before 64 tokens (an array of at least 60 small
integers), so both runs decode exactly 64 tokens per request and the constrained run pays for
every step's host bitmask (llguidance), its upload and each chip's unpacking and masking.
Prints decode tokens/s for both, their ratio, and the host's mask time per step. Figures only:
no assertion on speed.

    .venv/bin/python bench/bench_sampling_grammar.py                  # tiny random Llama, 1x2 (seconds)
    .venv/bin/python bench/bench_sampling_grammar.py --model smollm2 --mesh 1x1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttdist.engine import EngineConfig, GenerationRequest, SamplingParams  # noqa: E402
from ttdist.engine.core import EngineCore  # noqa: E402
from ttdist.engine.grammar import GrammarKind, StructuredOutput  # noqa: E402
from ttdist.engine.grammar.compiler import GrammarState  # noqa: E402
from ttdist.engine.tokenizer import Tokenizer  # noqa: E402

BATCH = 32
TOKENS = 64
SCHEMA = {"type": "object", "properties": {"values": {"type": "array", "minItems": 60, "maxItems": 80,
                                                      "items": {"type": "integer", "minimum": 0, "maximum": 99}}},
          "required": ["values"], "additionalProperties": False}


def checkpoint(model: str) -> Path:
    if model == "smollm2":
        from ttdist.model.smollm2 import materialize

        return materialize()
    from ttdist.model.testing import tiny_llama_checkpoint

    return tiny_llama_checkpoint(Path(tempfile.mkdtemp()) / "tiny", seed=0)


class MaskClock:
    """Seconds spent writing grammar bitmasks on the host (wraps ``GrammarState.mask_into``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._original = GrammarState.mask_into

        def timed(state, row, vocab_size):
            start = time.perf_counter()
            self._original(state, row, vocab_size)
            self.seconds += time.perf_counter() - start

        GrammarState.mask_into = timed


def decode_rate(core: EngineCore, requests: list[GenerationRequest]) -> tuple[float, int]:
    """Decode tokens/s once every request has its first token (prefills excluded), and the decode steps."""
    for req in requests:
        core.add_request(req)
    first: set[str] = set()
    while len(first) < len(requests):
        first.update(out.request_id for out in core.step())
    start, tokens, steps = time.perf_counter(), 0, 0
    while core.has_work():
        outputs = core.step()
        tokens += sum(len(out.token_ids) for out in outputs)
        steps += 1
    return tokens / (time.perf_counter() - start), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--mesh", default="1x2")
    args = parser.parse_args()
    from ttdist.model.runner import MeshModelRunner

    path = checkpoint(args.model)
    tokenizer = Tokenizer.from_dir(path)
    runner = MeshModelRunner.from_checkpoint(path, mesh=args.mesh, backend="sim", dtype="float32", page_size=32,
                                             num_pages=BATCH * 4, max_batch=BATCH)
    prompts = [tokenizer.encode(f"List {i} numbers as JSON:") for i in range(BATCH)]
    spec = StructuredOutput(GrammarKind.JSON_SCHEMA, json.dumps(SCHEMA))
    clock = MaskClock()
    rates = {}
    for name, sampling in (("none", SamplingParams(max_tokens=TOKENS, ignore_eos=True)),
                           ("json_schema", SamplingParams(max_tokens=TOKENS, structured_output=spec)),
                           ("none (again)", SamplingParams(max_tokens=TOKENS, ignore_eos=True))):
        core = EngineCore(runner, tokenizer, EngineConfig(max_batch=BATCH, max_waiting=BATCH))
        clock.seconds = 0.0
        rate, steps = decode_rate(core, [GenerationRequest(f"{name}-{i}", prompt_token_ids=p, sampling=sampling)
                                         for i, p in enumerate(prompts)])
        rates[name] = rate
        print(f"{name:>13}: {rate:8.1f} decode tokens/s  ({steps} steps, host mask {1e3 * clock.seconds / max(steps, 1):.2f} ms/step)")
    free = (rates["none"] + rates["none (again)"]) / 2
    print(f"json_schema / none: {rates['json_schema'] / free:.3f}x  ({args.model}, mesh {args.mesh}, batch {BATCH}, "
          f"{TOKENS} tokens, simulator)")


if __name__ == "__main__":
    main()
