"""One decode step (batch 32) of the tensor-parallel model on a simulated mesh vs the
unsharded transformers forward of the same model, same machine, same run.

Also prints the accuracy cost of bfloat8_b / bfloat4_b weights: PCC of prefill logits
against fp32 weights.

    .venv/bin/python bench/bench_model.py [--model smollm2|even] [--mesh 8x4] [--batch 32] [--context 128]

``--model even`` is a random 8-layer Llama whose heads (16 / 8 KV), hidden (1024) and FF
(4096) divide evenly over 8x4, so no padding or KV duplication inflates the mesh's work;
SmolLM2's 9 heads / 3 KV heads need both on 8 rows.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ttdist.engine.runner import DecodeInput, SamplingSpec
from ttdist.model.runner import MeshModelRunner
from ttdist.model.smollm2 import materialize


def time_side_by_side(fns, steps: int) -> list[float]:
    """Median seconds of each function, run alternately so both see the same machine load."""
    for fn in fns:
        fn()  # warm-up
    samples = [[] for _ in fns]
    for _ in range(steps):
        for fn, out in zip(fns, samples):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


def hf_decode_step(path, batch: int, context: int):
    from transformers import DynamicCache, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path).float().eval()
    cfg = model.config
    cache = DynamicCache(config=cfg)
    g = torch.Generator().manual_seed(0)
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(batch, cfg.num_key_value_heads, context, cfg.head_dim, generator=g)
        cache.update(k, torch.randn_like(k), layer)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), generator=g)
    pos = torch.full((batch, 1), context)

    def step():
        with torch.no_grad():
            model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True)
            cache.crop(-1)  # drop the new token: the context stays fixed across repetitions
    return step


def mesh_decode_step(path, mesh: str, batch: int, context: int, dtype: str):
    pages_per_user = context // 32 + 1
    runner = MeshModelRunner.from_checkpoint(path, mesh=mesh, dtype=dtype, page_size=32, num_pages=batch * pages_per_user)
    tables = [list(range(u * pages_per_user, (u + 1) * pages_per_user)) for u in range(batch)]
    rng = np.random.default_rng(0)
    inp = DecodeInput(rng.integers(0, runner.info.vocab_size, batch).tolist(), [context] * batch, tables, [SamplingSpec()] * batch)
    return runner, (lambda: runner.decode(inp))


def matmul_work_ratio(layout) -> float:
    """Multiply-adds per token summed over every chip, over those of the unsharded model."""
    from math import prod

    c = layout.config
    chips = layout.spec.num_chips
    plans = {p.name: p for p in layout.plans()}
    per_layer = sum(prod(plans[n].local_shape) for n in ("wqkv", "wo", "w1", "w3", "w2")) * chips
    mesh = per_layer * c.num_hidden_layers + prod(plans["lm_head"].local_shape) * chips
    hd, h = c.head_dim, c.hidden_size
    dense = h * hd * (2 * c.num_attention_heads + 2 * c.num_key_value_heads) + 3 * h * c.intermediate_size
    return mesh / (dense * c.num_hidden_layers + h * c.vocab_size)


def precision_cost(path, mesh: str) -> dict[str, float]:
    prompt = list(range(100, 164))
    ref = MeshModelRunner.from_checkpoint(path, mesh=mesh, dtype="float32", num_pages=4).prefill_logits(prompt, 0, [0, 1])[0]
    out = {}
    for dtype in ("bfloat16", "bfloat8_b", "bfloat4_b"):
        got = MeshModelRunner.from_checkpoint(path, mesh=mesh, dtype=dtype, num_pages=4).prefill_logits(prompt, 0, [0, 1])[0]
        out[dtype] = float(np.corrcoef(got, ref)[0, 1])
    return out


def even_checkpoint():
    import tempfile

    from ttdist.model.testing import tiny_llama_checkpoint

    return tiny_llama_checkpoint(
        tempfile.mkdtemp(prefix="ttdist-bench-"), hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
        num_attention_heads=16, num_key_value_heads=8, head_dim=64, vocab_size=32000, with_tokenizer=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["smollm2", "even"], default="smollm2")
    ap.add_argument("--mesh", default="8x4")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = materialize() if args.model == "smollm2" else even_checkpoint()

    hf_step = hf_decode_step(path, args.batch, args.context)
    runner, tp_step = mesh_decode_step(path, args.mesh, args.batch, args.context, "float32")
    hf_s, tp_s = time_side_by_side([hf_step, tp_step], args.steps)
    print(f"model {args.model}, batch {args.batch}, context {args.context}, torch threads {torch.get_num_threads()}")
    print(f"  layout: {runner.model.layout.describe()}")
    print(f"  transformers unsharded decode step : {hf_s * 1e3:8.1f} ms (median of {args.steps}, alternating)")
    print(f"  ttdist sim {args.mesh} TP decode step   : {tp_s * 1e3:8.1f} ms (median of {args.steps})")
    print(f"  ratio sim/transformers             : {tp_s / hf_s:8.2f}x (target <= 1.3x)")
    print(f"  matmul work of the layout, all chips / unsharded: {matmul_work_ratio(runner.model.layout):.2f}x "
          f"(padding; KV heads held per chip: {runner.model.layout.n_kv_local * runner.model.layout.n_inner} "
          f"vs {runner.model.config.num_key_value_heads})")
    runner.backend.ccl.clear()
    tp_step()
    per_axis = {k: f"{v / 1e6:.2f} MB" for k, v in sorted(runner.backend.ccl.bytes_per_axis().items())}
    print(f"  CCL bytes per decode step by axis  : {per_axis} ({runner.backend.ccl.count()} collectives)")
    print("accuracy of weight formats (prefill logits PCC vs fp32 weights, same mesh):")
    for dtype, value in precision_cost(path, args.mesh).items():
        print(f"  {dtype:10s}: {value:.6f}")


if __name__ == "__main__":
    main()
