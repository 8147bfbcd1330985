"""Plot the scale-out figures recorded in docs/benchmarks.md: tokens/s through 1 and 2 routers as
a share of the same load sent straight to the replicas, at 1..16 replicas.

The figures are data here, copied as recorded from ``bench/bench_scaleout.py`` runs on the 2-core
development machine (2026-12-06); this script measures nothing. Rerun the bench and edit
``RUNS`` to plot new figures.

    .venv/bin/python bench/plot_scaleout.py [--out docs/img/scaleout.svg]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleoutRun:
    label: str
    replicas: tuple[int, ...]
    one_router_pct: tuple[float, ...]    # tokens/s through 1 router / direct, in %
    two_routers_pct: tuple[float, ...]   # through 2 routers sharing one core / direct, in %


RUNS = (
    ScaleoutRun("2026-12-06", (1, 2, 4, 8, 16), (105, 106, 106, 131, 123), (105, 105, 105, 125, 109)),
    ScaleoutRun("2026-12-06, again after the review pass", (16,), (114,), (104,)),
)
TARGET_PCT = 90


def plot(out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "ttdist"   # stable ids: the SVG changes only when the figure does
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    first, *again = RUNS
    ax.plot(first.replicas, first.one_router_pct, "o-", color="C0", label=f"1 router ({first.label})")
    ax.plot(first.replicas, first.two_routers_pct, "s-", color="C1", label=f"2 routers on one core ({first.label})")
    for run in again:
        ax.plot(run.replicas, run.one_router_pct, "o", color="C0", mfc="none", ms=9, label=f"1 router ({run.label})")
        ax.plot(run.replicas, run.two_routers_pct, "s", color="C1", mfc="none", ms=9, label=f"2 routers ({run.label})")
    ax.axhline(100, color="0.3", ls="--", lw=1, label="direct to the replicas (= 100 %)")
    ax.axhline(TARGET_PCT, color="C3", ls=":", lw=1, label=f"target at 16 replicas (>= {TARGET_PCT} %)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(first.replicas, [str(n) for n in first.replicas])
    ax.set_xlabel("replicas (scripted, 14 ms decode step, 32 users each)")
    ax.set_ylabel("tokens/s through the routers, % of direct")
    ax.set_ylim(80, 140)
    ax.set_title("Scale-out: routed throughput relative to direct (as recorded)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, metadata={"Date": None})
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img/scaleout.svg")
    plot(ap.parse_args().out)


if __name__ == "__main__":
    main()
