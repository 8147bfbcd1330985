"""Fit the planner's nine free constants ONCE over every published row the tests hold.

    PYTHONPATH=. python bench/fit_planner.py [--rows tests/planner/published.json]
    PYTHONPATH=. python bench/fit_planner.py --table      # no fit: every row's error as markdown

The rows are tt-metal's published Llama figures (``tests/planner/published.json``, each with
its source); excluded rows (with their reason) take no part. The op lists of every row are
built once; the fit then times them again and again under different constants, minimising the
sum of squared log errors of tokens/s/user and TTFT over all rows together (coordinate descent
on a log grid, a few sweeps). It prints the constants to write into ``ttdist/planner/hardware.py``
and every row's error under them. Nothing is fitted per model or per system.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

from ttdist.planner.hardware import WORMHOLE, Hardware
from ttdist.planner.plan import plan, row_options, step_ops
from ttdist.planner.step import StepBuilder
from ttdist.model.layout import Layout

ROWS = Path(__file__).resolve().parent.parent / "tests" / "planner" / "published.json"
FREE = ("unfused_op_s", "unfused_ccl_s", "sdpa_decode_positions_per_s", "prefill_matmul_efficiency",
        "sdpa_prefill_scores_per_s", "prefill_dispatch_s", "prefill_op_s", "host_logits_bytes_per_s", "host_read_s")


def with_params(hw: Hardware, values: dict) -> Hardware:
    shared = {"op_s": values["unfused_op_s"], "ccl_s": values["unfused_ccl_s"]}   # one tt_transformers op set
    rest = {k: v for k, v in values.items() if not k.startswith("unfused_")}
    return replace(hw, unfused_decode=replace(hw.unfused_decode, **shared),
                   generic_2d_decode=replace(hw.generic_2d_decode, **shared), **rest)


def params_of(hw: Hardware) -> dict:
    return {"unfused_op_s": hw.unfused_decode.op_s, "unfused_ccl_s": hw.unfused_decode.ccl_s,
            **{k: getattr(hw, k) for k in FREE if not k.startswith("unfused_")}}


def prepared(rows: list[dict]) -> list[tuple[dict, object]]:
    out = []
    for row in rows:
        p = plan(row["model"], row["system"], batch=row["batch"], context=row["input"], input_len=row["input"],
                 **row_options(row))
        from ttdist.planner.catalog import resolve_model  # the same config plan() used
        layout = Layout(resolve_model(row["model"])[1], p.system.mesh)
        builder = StepBuilder(layout, p.precision, host_sampling=p.sampling == "host")
        ops = step_ops(builder, p.system.mesh, users=p.users, context=p.context, input_len=p.input_len,
                       chunk=p.memory.prefill_chunk, prefetch=p.decode.prefetch, hardware=WORMHOLE,
                       fused=p.kernels.name == WORMHOLE.fused_decode.name)
        out.append((row, ops))
    return out


def errors(prep, hw: Hardware) -> list[tuple[dict, float, float]]:
    out = []
    for row, ops in prep:
        decode, prefill = ops.time(hw)
        out.append((row, 1.0 / decode.total_s, prefill.total_s * 1e3))
    return out


TOLERANCE = {"tsu": 0.25, "ttft_ms": 0.35}   # what tests/planner/test_published.py holds


def loss(prep, hw: Hardware) -> float:
    """Squared log errors, plus a steep penalty on any row beyond 90 % of its tolerance and a
    steeper one beyond the tolerance itself."""
    total = 0.0
    for row, tsu, ttft in errors(prep, hw):
        for key, value in (("tsu", tsu), ("ttft_ms", ttft)):
            if not row.get(key):
                continue
            err = math.log(value / row[key])
            beyond = max(0.0, abs(value / row[key] - 1) - TOLERANCE[key])   # outside what the test holds
            total += err ** 2 + 20 * max(0.0, abs(err) - math.log1p(0.9 * TOLERANCE[key])) ** 2 + 1e4 * beyond ** 2
    return total


def fit(prep, hw: Hardware, sweeps: int = 3) -> Hardware:
    values = params_of(hw)
    for sweep in range(sweeps):
        span = 2.0 / (sweep + 1)
        for name in FREE:
            best = (loss(prep, with_params(hw, values)), values[name])
            for step in range(-6, 7):
                trial = {**values, name: values[name] * math.exp(span * step / 6)}
                value = loss(prep, with_params(hw, trial))
                if value < best[0]:
                    best = (value, trial[name])
            values[name] = best[1]
        print(f"sweep {sweep + 1}: loss {best[0]:.4f}", {k: f"{v:.4g}" for k, v in values.items()})
    return with_params(hw, values)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| source | model | system | batch | input | t/s/u | published | error | TTFT ms | published | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        p = plan(row["model"], row["system"], batch=row["batch"], context=row["input"], input_len=row["input"],
                 **row_options(row))
        tsu, ttft = p.tokens_per_s_per_user, p.ttft_s * 1e3
        pub = row.get("ttft_ms")
        ttft_cells = f"{ttft:,.0f} | {pub:,.0f} | {ttft / pub - 1:+.0%}" if pub else f"{ttft:,.0f} | - | "
        note = " (excluded)" if row.get("excluded") else ""
        lines.append(f"| {row['source']} | {row['model']} | {row['system']} | {row['batch']} | {row['input']} | "
                     f"{tsu:.1f} | {row['tsu']:g} | {tsu / row['tsu'] - 1:+.0%}{note} | {ttft_cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, default=ROWS)
    parser.add_argument("--table", action="store_true", help="print every row's error as markdown, fit nothing")
    parser.add_argument("--sweeps", type=int, default=3, help="coordinate-descent sweeps (default %(default)s)")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.rows.read_text())["rows"]))
        return
    rows = [r for r in json.loads(args.rows.read_text())["rows"] if not r.get("excluded")]
    prep = prepared(rows)
    print(f"{len(rows)} rows; loss with the current constants {loss(prep, WORMHOLE):.4f}")
    hw = fit(prep, WORMHOLE, args.sweeps)
    for row, tsu, ttft in errors(prep, hw):
        t = f"{ttft:9.0f} vs {row['ttft_ms']:9.0f} ({ttft / row['ttft_ms'] - 1:+.0%})" if row.get("ttft_ms") else ""
        print(f"{row['source']:8} {row['model']:14} {row['system']:5} b{row['batch']:<3} in {row['input']:<6} "
              f"t/s/u {tsu:6.1f} vs {row['tsu']:6.1f} ({tsu / row['tsu'] - 1:+.0%})  TTFT {t}")


if __name__ == "__main__":
    main()
