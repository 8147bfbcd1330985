"""``--plot FILE.png``: latency CDFs (TTFT, TPOT, ITL, E2E) and output throughput over time."""

from __future__ import annotations

import numpy as np

from ttdist.loadgen.runner import Run


def throughput_over_time(run: Run, bucket_s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Output tokens per second in buckets of ``bucket_s``, counting each token when its chunk arrived
    (a request's tokens are spread over its streaming time: TTFT, then one per ITL)."""
    times = []
    for r in run.requests:
        if not r.ok:
            continue
        t = r.start_s + r.ttft_s
        times.append(t)
        for gap in r.itl_s:
            t += gap
            times.append(t)
    if not times:
        return np.zeros(0), np.zeros(0)
    edges = np.arange(0.0, max(times) + bucket_s, bucket_s)
    counts, _ = np.histogram(times, bins=edges)
    return edges[:-1], counts / bucket_s


def plot(runs: list[Run], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(24, 4.5))
    series = (("TTFT", lambda r: [m.ttft_s for m in r.requests if m.ok]),
              ("TPOT", lambda r: [m.tpot_s for m in r.requests if m.ok and not np.isnan(m.tpot_s)]),
              ("ITL", lambda r: [x for m in r.requests if m.ok for x in m.itl_s]),
              ("E2E latency", lambda r: [m.e2el_s for m in r.requests if m.ok]))
    for ax, (title, values) in zip(axes, series):
        for run in runs:
            v = np.sort(np.asarray(values(run)) * 1e3)
            if v.size:
                ax.plot(v, np.arange(1, v.size + 1) / v.size, label=run.load.describe())
        ax.set_title(f"{title} CDF")
        ax.set_xlabel("ms")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    for run in runs:
        t, tput = throughput_over_time(run)
        axes[4].plot(t, tput, label=run.load.describe())
    axes[4].set_title("output throughput")
    axes[4].set_xlabel("s since start")
    axes[4].set_ylabel("tokens/s")
    axes[4].grid(alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    axes[4].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
