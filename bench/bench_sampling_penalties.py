"""Decode tokens/s at batch 32 with penalties and biases on every user vs none, same runner,
same run: repetition, presence and frequency penalties, a logit bias and min_p applied on the
mesh (``ttdist.mesh.penalties``) against the plain decode step.

The modes run in alternating blocks of ``--steps`` decode steps (the first step of each block,
where the penalized users are seeded into their slots, is not timed), so both see the same
machine load. Also prints what a penalized step uploads and reads back (the counts live on the
chips: nothing for them).

    .venv/bin/python bench/bench_sampling_penalties.py [--model smollm2|PATH] [--mesh n300]
        [--backend sim|ttnn] [--emulate] [--batch 32] [--context 128] [--steps 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np

from ttdist.engine.runner import DecodeInput, PenaltySpec, SamplingSpec

PENALTIES = PenaltySpec(repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=0.5,
                        logit_bias=((100, 2.0), (200, -5.0)), min_p=0.05)


class Users:
    """``batch`` users decoding from ``context`` prompt tokens, each with its own pages."""

    def __init__(self, runner, batch: int, context: int, penalized: bool, tag: str):
        page = runner.info.page_size
        pages = -(-(context + 256) // page)
        rng = np.random.default_rng(0)
        self.runner, self.penalized, self.tag = runner, penalized, tag
        self.history = [list(rng.integers(3, runner.info.vocab_size, context)) for _ in range(batch)]
        self.prompt = context
        self.tables = [list(range(u * pages, (u + 1) * pages)) for u in range(batch)]

    def step(self) -> None:
        specs = [SamplingSpec(temperature=0.8, seed=u, step=len(h) - self.prompt,
                              penalties=PENALTIES if self.penalized else None, history=h, num_prompt_tokens=self.prompt)
                 for u, h in enumerate(self.history)]
        inp = DecodeInput([h[-1] for h in self.history], [len(h) - 1 for h in self.history], self.tables, specs,
                          seq_ids=[f"{self.tag}{u}" for u in range(len(self.history))])
        for h, token in zip(self.history, self.runner.decode(inp)):
            h.append(token)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--mesh", default="n300")
    ap.add_argument("--backend", default="sim", choices=("sim", "ttnn"))
    ap.add_argument("--emulate", action="store_true", help="with --backend ttnn: emulated chips")
    ap.add_argument("--dtype", default=None, help="default: float32 on sim, accuracy on ttnn")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from ttdist.mesh import ttnn_emu
    from ttdist.model.runner import MeshModelRunner
    from ttdist.model.smollm2 import materialize

    path = materialize() if args.model == "smollm2" else args.model
    dtype = args.dtype or ("float32" if args.backend == "sim" else "accuracy")
    with ttnn_emu.installed() if args.emulate else contextlib.nullcontext():
        pages = args.batch * -(-(args.context + 256) // 32)
        runner = MeshModelRunner.from_checkpoint(path, mesh=args.mesh, backend=args.backend, dtype=dtype, page_size=32,
                                                 num_pages=pages, max_batch=args.batch)
        modes = {"off": Users(runner, args.batch, args.context, False, "plain"),
                 "on": Users(runner, args.batch, args.context, True, "penalized")}
        times = {mode: [] for mode in modes}
        traffic = {}
        for _ in range(args.rounds):
            for mode, users in modes.items():
                users.step()   # untimed: compiles on first use, seeds the penalized users' slots
                for _ in range(args.steps):
                    runner.backend.transfers.clear()
                    t0 = time.perf_counter()
                    users.step()
                    times[mode].append(time.perf_counter() - t0)
                    t = runner.backend.transfers
                    traffic[mode] = (t.uploads, t.upload_bytes, t.readbacks, t.readback_bytes)
        runner.close()

    print(f"decode batch {args.batch}, context {args.context}, {args.model} on {args.mesh} ({args.backend}"
          f"{', emulated' if args.emulate else ''}, {dtype}); {args.rounds} rounds x {args.steps} steps per mode")
    print(f"{'penalties':<10}{'median step ms':>16}{'tokens/s':>11}{'uploads/step':>14}{'upload B':>10}{'readback B':>12}")
    rate = {}
    for mode, samples in times.items():
        median = statistics.median(samples)
        rate[mode] = args.batch / median
        up, up_b, _, back_b = traffic[mode]
        print(f"{mode:<10}{1000 * median:>16.1f}{rate[mode]:>11.1f}{up:>14}{up_b:>10}{back_b:>12}")
    print(f"penalties on: {rate['on'] / rate['off']:.3f}x the tokens/s of penalties off")


if __name__ == "__main__":
    main()
