"""Accuracy of the precision presets on SmolLM2-135M, against float32, on the simulator.

For each of ``--prompts`` prompts the float32 model greedily continues ``--tokens`` tokens;
every precision then reads the same tokens (teacher-forced, one position at a time after the
prompt) and its logits at each position are compared with float32's: PCC, and whether the
top-1 token agrees. The simulator emulates each format exactly (bf16 rounding, block-float
rounding with a shared exponent per 16 values) for every weight group and the KV cache.

    python bench/bench_precision.py                 # 32 prompts x 8 tokens, mesh 1x1
    python bench/bench_precision.py --mesh 1x2 --prompts 48
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttdist.mesh.precision import Precision  # noqa: E402

PROMPTS = [
    "The capital of France is", "Water boils at a temperature of", "The largest planet in the solar system is",
    "To make a cup of tea, first", "The quick brown fox", "In 1969, the first person to walk on the moon was",
    "Photosynthesis is the process by which", "A good way to learn a new language is",
    "The three primary colors are", "def fibonacci(n):", "The French word for cat is", "Once upon a time, in a small village,",
    "The speed of light is approximately", "My favourite book is", "The mitochondria is the", "Dear hiring manager,",
    "The recipe calls for two cups of", "In machine learning, overfitting means", "The tallest mountain on Earth is",
    "The sum of the angles of a triangle is", "Shakespeare wrote", "The best time to visit Japan is",
    "import numpy as np\n", "The chemical symbol for gold is", "A haiku about the sea:", "The Great Wall of China was built",
    "Rain is caused by", "The first step in solving an equation is", "Coffee originated in", "The human heart has",
    "Translate to Spanish: good morning", "List three uses of a paperclip:", "The planet closest to the sun is",
    "Summer follows", "An apple a day", "The opposite of hot is",
]
STANDARD = ["bfloat16", "accuracy", "bfloat8_b", "performance", "bfloat4_b"]


def pcc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


PAGES = [0, 1]  # 64 positions: every prompt plus its continuation


def run(runner, prompt: list[int], continuation: list[int]) -> list[np.ndarray]:
    """Logits after the prompt and after each continuation token but the last (one-token prefill chunks)."""
    rows = [runner.prefill_logits(prompt, 0, PAGES)[0]]
    for i, tok in enumerate(continuation[:-1]):
        rows.append(runner.prefill_logits([tok], len(prompt) + i, PAGES)[0])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mesh", default="1x1")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--precisions", nargs="*", default=STANDARD)
    args = ap.parse_args()
    if args.prompts > len(PROMPTS):
        sys.exit(f"--prompts: at most {len(PROMPTS)}")

    import torch

    from ttdist.engine.tokenizer import Tokenizer
    from ttdist.model.runner import MeshModelRunner
    from ttdist.model.smollm2 import materialize
    from ttdist.model.weights import load_weights

    torch.set_num_threads(2)
    path = materialize()
    tok = Tokenizer.from_dir(path)
    prompts = [tok.encode(p) for p in PROMPTS[: args.prompts]]
    cache = Path(tempfile.mkdtemp(prefix="bench-precision-"))

    def make(precision: str):
        weights = load_weights(path, mesh=args.mesh, dtype=precision, cache_dir=cache)
        return MeshModelRunner(weights, backend="sim", num_pages=16, max_context=1024)

    t0 = time.perf_counter()
    ref = make("float32")
    conts, ref_rows = [], []
    for p in prompts:  # greedy float32 continuation, one-token chunks after the prompt
        rows, ids = [ref.prefill_logits(p, 0, PAGES)[0]], []
        for k in range(args.tokens):
            ids.append(int(np.argmax(rows[-1])))
            if k < args.tokens - 1:
                rows.append(ref.prefill_logits([ids[-1]], len(p) + k, PAGES)[0])
        conts.append(ids)
        ref_rows.append(rows)
    del ref
    print(f"SmolLM2-135M on sim {args.mesh}: {len(prompts)} prompts x {args.tokens} positions vs float32 "
          f"(reference built in {time.perf_counter() - t0:.0f} s; measured on a shared CPU)")
    print(f"{'precision':<12} {'groups (wqkv/wo/ff1,ff3/ff2/lm_head/kv)':<46} {'PCC mean':>9} {'PCC min':>8} {'top-1':>7}")
    for name in args.precisions:
        runner = make(name)
        p_all, agree, total = [], 0, 0
        for p, ids, want in zip(prompts, conts, ref_rows):
            for got, exp in zip(run(runner, p, ids), want):
                p_all.append(pcc(got, exp))
                agree += int(np.argmax(got) == np.argmax(exp))
                total += 1
        prec = Precision.parse(name)
        groups = "/".join(getattr(prec, g).value.replace("bfloat", "bf").replace("_b", "")
                          for g in ("wqkv", "wo", "ff1_ff3", "ff2", "lm_head", "kv_cache"))
        print(f"{name:<12} {groups:<46} {np.mean(p_all):>9.5f} {np.min(p_all):>8.4f} {100 * agree / total:>6.1f}%")
        del runner


if __name__ == "__main__":
    main()
