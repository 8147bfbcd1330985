"""Plot a ``ttdist bench --sweep ... --json FILE`` run as curves over the offered request rate:
output tokens/s achieved, TTFT and TPOT (median and P99).

``ttdist bench --plot`` draws each run's latency CDFs and throughput over time; this draws the
sweep's summaries side by side, where a knee shows. Runs at rate ``inf`` are left out.

    .venv/bin/python bench/plot_sweep.py run.json [--out docs/img/bench-sweep-curves.svg]
"""

from __future__ import annotations

import argparse
import json
import math


def plot(path: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "ttdist"   # stable ids: the SVG changes only when the figure does
    import matplotlib.pyplot as plt

    with open(path) as f:
        runs = [r for r in json.load(f)["runs"] if r["load"]["rate"] is not None and math.isfinite(r["load"]["rate"])]
    rates = [r["load"]["rate"] for r in runs]
    s = [r["summary"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(rates, [x["output_throughput"] for x in s], "o-", label="output tokens/s")
    axes[0].set_title("output throughput")
    axes[0].set_ylabel("tokens/s")
    for ax, key, name in ((axes[1], "ttft", "TTFT"), (axes[2], "tpot", "TPOT")):
        ax.plot(rates, [1e3 * x[key]["p50"] for x in s], "o-", label="median")
        ax.plot(rates, [1e3 * x[key]["p99"] for x in s], "s--", label="P99")
        slo = s[0].get("slo", {}).get(key)
        if slo:
            ax.axhline(1e3 * slo, color="C3", ls=":", lw=1, label=f"SLO {1e3 * slo:g} ms")
        ax.set_title(name)
        ax.set_ylabel("ms")
        ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.set_xlabel("offered request rate (req/s)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, metadata={"Date": None})
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="a ttdist bench --json file")
    ap.add_argument("--out", default="docs/img/bench-sweep-curves.svg")
    args = ap.parse_args()
    plot(args.json, args.out)


if __name__ == "__main__":
    main()
