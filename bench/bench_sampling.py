"""Decode tokens/s at batch 32 with each sampling feature on vs off, one engine, one run.

32 users (prompts of 16 random tokens, ``--tokens`` generated each, EOS ignored) decode together
on the mesh simulator (or the ttnn backend on emulated chips with ``--emulate``); each variant sets
one feature on every request:

* ``off``: greedy, nothing asked (the plain decode step);
* ``logprobs5``: top-5 logprobs;
* ``penalties``: repetition 1.2, presence 0.5, frequency 0.5, two logit biases, min_p 0.05;
* ``json_schema``: a JSON schema (an array of at least 60 small integers, so no request can
  finish early and every step pays for its host bitmask, the upload and each chip's masking);
* ``before``: ``off`` on the code before the sampling features existed (commit ``--before``,
  extracted with ``git archive`` into a temporary folder), in a child process that loads the same
  checkpoint and decodes the same prompts when told to, so its rounds interleave with the others.

Every round runs each variant once, in turn. Each decode step is timed once every user has its
first token (prefills left out), in wall time and in the process's CPU time (with one torch
thread, the default, that is the step's own work, which holds on a shared machine where wall time
does not); a variant's decode tokens/s is 32 over its median step, printed with its ratio to
``off`` (``before``: ``off`` / ``before``, the no-feature overhead), and the rate of its mean
step (which counts the rare steps, such as a penalized slot's seeding, that the median drops).
Figures only: nothing is asserted.

    .venv/bin/python bench/bench_sampling.py                            # tiny random Llama, 1x2 (a minute)
    .venv/bin/python bench/bench_sampling.py --model smollm2 --tokens 24 --repeats 3
    .venv/bin/python bench/bench_sampling.py --emulate --mesh n300 --before none
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
TREE = Path(os.environ.get("TTDIST_BENCH_TREE") or HERE.parents[1])   # the child imports the older code
sys.path.insert(0, str(TREE))

BATCH, PROMPT, PAGE = 32, 16, 32
BEFORE = "a95daf6"   # main just before the logprobs merge (2be5924), the first sampling feature
SCHEMA = {"type": "object", "properties": {"values": {"type": "array", "minItems": 60, "maxItems": 80,
                                                      "items": {"type": "integer", "minimum": 0, "maximum": 99}}},
          "required": ["values"], "additionalProperties": False}


def variants() -> dict[str, dict]:
    from ttdist.engine.grammar import GrammarKind, StructuredOutput

    return {
        "off": {},
        "logprobs5": {"logprobs": 5},
        "penalties": {"repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": 0.5,
                      "logit_bias": {100: 2.0, 200: -5.0}, "min_p": 0.05},
        "json_schema": {"structured_output": StructuredOutput(GrammarKind.JSON_SCHEMA, json.dumps(SCHEMA)),
                        "ignore_eos": False},
    }


def checkpoint(model: str) -> Path:
    if model == "smollm2":
        from ttdist.model.smollm2 import materialize

        return materialize()
    from ttdist.model.testing import tiny_llama_checkpoint

    return tiny_llama_checkpoint(Path(tempfile.mkdtemp()) / "tiny", seed=0)


def make_core(path: Path, mesh: str, tokens: int, emulate: bool):
    """An engine on a runner sized for one batch of ``BATCH`` users (the same on both code trees)."""
    from ttdist.engine import EngineConfig
    from ttdist.engine.core import EngineCore
    from ttdist.engine.tokenizer import Tokenizer
    from ttdist.model.runner import MeshModelRunner

    pages = BATCH * -(-(PROMPT + tokens) // PAGE) + BATCH
    runner = MeshModelRunner.from_checkpoint(path, mesh=mesh, backend="ttnn" if emulate else "sim",
                                             dtype="bfloat16" if emulate else "float32", page_size=PAGE,
                                             num_pages=pages, max_batch=BATCH, max_context=PROMPT + tokens + PAGE)
    config = EngineConfig(max_batch=BATCH, max_waiting=BATCH, prefill_chunk=PAGE, prefix_caching=False)
    return EngineCore(runner, Tokenizer.from_dir(path), config), runner.info.vocab_size


def decode_steps(core, prompts: list[list[int]], sampling: dict, tag: str, tokens: int) -> list[tuple[float, float]]:
    """Each decode step's (wall, CPU) seconds once every user of the batch has its first token
    (prefills left out); a step that finishes fewer than every user is left out too."""
    from ttdist.engine import GenerationRequest, SamplingParams

    options = {"max_tokens": tokens, "ignore_eos": True, **sampling}
    for i, prompt in enumerate(prompts):
        core.add_request(GenerationRequest(f"{tag}-{i}", prompt_token_ids=prompt, sampling=SamplingParams(**options)))
    first: set[str] = set()
    while len(first) < len(prompts):
        first.update(out.request_id for out in core.step())
    steps = []
    while core.has_work():
        start, cpu = time.perf_counter(), time.process_time()
        count = sum(len(out.token_ids) for out in core.step())
        if count == len(prompts):
            steps.append((time.perf_counter() - start, time.process_time() - cpu))
    return steps


def child(args) -> None:
    """``--child``: load, then decode ``off`` once per line on stdin, answering its steps' times."""
    core, _ = make_core(Path(args.checkpoint), args.mesh, args.tokens, args.emulate)
    prompts = json.loads(args.prompts)
    decode_steps(core, prompts, {}, "warm", 4)
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(decode_steps(core, prompts, {}, line.strip(), args.tokens)), flush=True)


class Before:
    """The pre-feature code in a child process, driven round by round."""

    def __init__(self, rev: str, args, path: Path, prompts: list[list[int]]):
        self.folder = tempfile.TemporaryDirectory(prefix="ttdist-before-")
        archive = subprocess.run(["git", "-C", str(HERE.parents[1]), "archive", rev, "ttdist"], check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(self.folder.name, filter="data")
        cmd = [sys.executable, str(HERE), "--child", "--checkpoint", str(path), "--mesh", args.mesh, "--threads", str(args.threads),
               "--tokens", str(args.tokens), "--prompts", json.dumps(prompts)] + (["--emulate"] if args.emulate else [])
        env = {**os.environ, "TTDIST_BENCH_TREE": self.folder.name}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {rev} child did not start (exit {self.proc.wait()})")

    def steps(self, n: int) -> list[tuple[float, float]]:
        self.proc.stdin.write(f"before{n}\n")
        self.proc.stdin.flush()
        return [tuple(step) for step in json.loads(self.proc.stdout.readline())]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.folder.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=("tiny", "smollm2"))
    ap.add_argument("--mesh", default="1x2")
    ap.add_argument("--emulate", action="store_true", help="the ttnn backend on emulated chips instead of the simulator")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32, help="tokens generated per user (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each process (default %(default)s: "
                    "its CPU time then counts the step's work alone, a figure that holds on a loaded machine)")
    ap.add_argument("--before", default=BEFORE, help="the pre-feature commit to compare 'off' with, or 'none'")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.emulate:
        import torch

        torch.set_num_threads(args.threads)
    if args.emulate:
        from ttdist.mesh import ttnn_emu

        ttnn_emu.install()
    if args.child:
        return child(args)

    path = checkpoint(args.model)
    core, vocab = make_core(path, args.mesh, args.tokens, args.emulate)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, vocab) for _ in range(PROMPT)] for _ in range(BATCH)]
    features = variants()
    for name, sampling in features.items():   # warm-up: every program of every step built
        decode_steps(core, prompts, sampling, f"warm-{name}", 4)
    before = Before(args.before, args, path, prompts) if args.before != "none" else None
    steps: dict[str, list[tuple[float, float]]] = {name: [] for name in (["before"] if before else []) + list(features)}
    try:
        for repeat in range(args.repeats):
            if before:
                steps["before"] += before.steps(repeat)
            for name, sampling in features.items():
                steps[name] += decode_steps(core, prompts, sampling, f"{name}{repeat}", args.tokens)
    finally:
        if before:
            before.close()
    backend = f"ttnn (emulated) {args.mesh}" if args.emulate else f"sim {args.mesh}"
    print(f"model {args.model}, {backend}, batch {BATCH}, {args.tokens} tokens per user, {args.threads} torch thread(s), "
          f"{args.repeats} rounds; decode tokens/s = {BATCH} / the median step, in wall time and in this process's CPU time")
    for clock, label in ((0, "wall"), (1, "cpu")):
        rates = {name: BATCH / statistics.median(s[clock] for s in values) for name, values in steps.items()}
        means = {name: BATCH * len(values) / sum(s[clock] for s in values) for name, values in steps.items()}
        for name, rate in rates.items():
            ratio = (f"off / before {rates['off'] / rate:.3f}, commit {args.before}" if name == "before"
                     else f"{rate / rates['off']:.3f}x off")
            mean = means["off"] / means[name] if name == "before" else means[name] / means["off"]
            print(f"{label:>4} {name:>12}: {rate:9.1f} tok/s  ({ratio}; {len(steps[name])} steps, mean-step rate "
                  f"{means[name]:.1f}: {mean:.3f})")


if __name__ == "__main__":
    main()
