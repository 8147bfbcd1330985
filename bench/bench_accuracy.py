"""Teacher-forced top-1 / top-5 of SmolLM2-135M at the precision presets, as tt_transformers measures it.

The reference is transformers in float32 (tt_transformers' ``.refpt`` files: its top-5 tokens at
every position of a text). At every position the model reads the true text before it and its
greedy token scores top-1 if it is the reference's top-1 and top-5 if it is among the reference's
top-5 (``ttdist.model.token_accuracy``). Two modes:

* ``prefill`` (default): one prefill of ``--positions`` tokens, every row scored (what
  ``tests/model/test_smollm2_emulated.py`` asserts; seconds per preset);
* ``decode``: tt_transformers' own schedule, a prefill of ``--prefill`` tokens, then
  ``--positions`` decode steps each fed the true token (the decode path reads K/V back from the
  cache in its own format; about 0.2 s a step on the simulator, several on the emulator).

Beside the presets it prints the ceilings: transformers itself in bfloat16, and float32 weights
(KV bf16). ``--attribute`` adds, for each preset, one row per tensor group below bf16 raised to
bf16 alone, and one with every weight in bf16: where the preset's loss comes from.

    python bench/bench_accuracy.py                                   # simulator, 1x1, 512 positions
    python bench/bench_accuracy.py --attribute
    python bench/bench_accuracy.py --mode decode --prefill 251       # 251 + 511 decode steps, 512 scored
    python bench/bench_accuracy.py --backend ttnn --mesh 8x4         # emulated Galaxy
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttdist.mesh.precision import DType, Precision  # noqa: E402
from ttdist.model.token_accuracy import reference_top5, token_accuracy  # noqa: E402

TEXT = Path(__file__).resolve().parents[1] / "tests" / "model" / "data" / "lighthouse.txt"
PAGE = 32
BELOW_BF16 = (DType.bfloat8_b, DType.bfloat4_b)


def variants(preset: str, attribute: bool) -> list[tuple[str, Precision, dict]]:
    """The preset, and with ``attribute`` each group below bf16 raised alone, then all weights bf16."""
    base = Precision.parse(preset)
    rows = [(preset, base, {})]
    if not attribute:
        return rows
    groups = {"attention (wqkv, wo)": ("wqkv", "wo"), "ff1_ff3": ("ff1_ff3",), "ff2": ("ff2",), "lm_head": ("lm_head",)}
    for label, names in groups.items():
        if any(getattr(base, g) in BELOW_BF16 for g in names):
            rows.append((f"  {label} bf16", dataclasses.replace(base, **{g: DType.bfloat16 for g in names}, name="custom"), {}))
    if base.kv_cache in BELOW_BF16:
        rows.append(("  kv_cache bf16", base, {"kv_dtype": "bfloat16"}))
    weights = ("wqkv", "wo", "ff1_ff3", "ff2", "lm_head")
    rows.append(("  every weight bf16", dataclasses.replace(base, **{g: DType.bfloat16 for g in weights}, name="custom"), {}))
    return rows


def greedy_tokens(runner, ids: list[int], mode: str, prefill: int):
    """The greedy token at each scored position (prefill: every row; decode: after the prefill)."""
    import numpy as np

    from ttdist.engine.runner import DecodeInput, PrefillInput, SamplingSpec

    table = list(range(-(-len(ids) // PAGE)))
    if mode == "prefill":
        return runner.model.prefill_all_logits(ids, table).argmax(-1)
    got = [runner.prefill(PrefillInput(ids[:prefill], 0, table, True))]
    for pos in range(prefill, len(ids)):
        got += runner.decode(DecodeInput([ids[pos]], [pos], [table], [SamplingSpec()], seq_ids=["text"]))
    return np.asarray(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sim", "ttnn"], default="sim", help="ttnn: the ttnn backend on emulated chips")
    ap.add_argument("--mesh", default="1x1")
    ap.add_argument("--mode", choices=["prefill", "decode"], default="prefill")
    ap.add_argument("--positions", type=int, default=512, help="scored positions (>= 500 as tt_transformers' 511)")
    ap.add_argument("--prefill", type=int, default=251, help="decode mode: tokens prefilled before the scored steps")
    ap.add_argument("--text", type=Path, default=TEXT)
    ap.add_argument("--presets", nargs="*", default=["accuracy", "performance"])
    ap.add_argument("--attribute", action="store_true", help="raise each group below bf16 to bf16 alone")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from ttdist.mesh import parse_mesh
    from ttdist.model.runner import MeshModelRunner
    from ttdist.model.smollm2 import materialize

    torch.set_num_threads(2)
    path = materialize()
    first = args.prefill if args.mode == "decode" else 0
    needed = first + args.positions - 1 if args.mode == "decode" else args.positions  # decode: the last step's input
    ids = AutoTokenizer.from_pretrained(path)(args.text.read_text()).input_ids[:needed]
    if len(ids) < needed or (args.mode == "decode" and first < 1):
        sys.exit(f"--text / --prefill: {len(ids)} tokens, {needed} needed (and a prefill of at least one)")
    hf = LlamaForCausalLM.from_pretrained(path).float().eval()
    with torch.no_grad():
        ref = reference_top5(hf(torch.tensor([ids])).logits[0].numpy())
        bf16 = hf.to(torch.bfloat16)(torch.tensor([ids])).logits[0].float().numpy().argmax(-1)
    del hf
    scored = slice(first - 1, first - 1 + args.positions) if args.mode == "decode" else slice(0, args.positions)
    want = ref[scored]  # row i of the logits predicts token i + 1
    if args.backend == "ttnn":
        from ttdist.mesh import ttnn_emu

        ttnn_emu.install()
    groups = 4 if parse_mesh(args.mesh).rows > 1 else 1
    cache = Path(tempfile.mkdtemp(prefix="bench-accuracy-"))
    print(f"SmolLM2-135M, {args.text.name}, {args.positions} positions, {args.mode} mode"
          + (f" after a {args.prefill}-token prefill" if args.mode == "decode" else "")
          + f"; reference transformers float32 (measured on a shared CPU)")
    print(f"{'transformers bfloat16':<34} {token_accuracy(bf16[scored], want)}", flush=True)
    rows = [("float32 weights (KV bf16)", Precision.parse("float32"), {"kv_dtype": "bfloat16"})]
    for preset in args.presets:
        rows += variants(preset, args.attribute)
    for label, precision, extra in rows:
        start = time.perf_counter()
        runner = MeshModelRunner.from_checkpoint(path, mesh=args.mesh, backend=args.backend, dtype=precision, page_size=PAGE,
                                                 num_pages=(len(ids) // PAGE + 1) * groups, max_batch=groups,
                                                 max_context=len(ids) + PAGE, cache_dir=cache, **extra)
        got = token_accuracy(greedy_tokens(runner, ids, args.mode, args.prefill), want)
        runner.close()
        print(f"{label:<34} {got}  [{args.backend} {args.mesh}, {time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
