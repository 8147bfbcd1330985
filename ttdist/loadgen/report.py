"""The benchmark's results as text (modelled on vLLM's ``bench serve``), JSON and a sweep table."""

from __future__ import annotations

import math

from ttdist.loadgen.metrics import Stat, Summary
from ttdist.loadgen.runner import Run

WIDTH = 50
JSON_SCHEMA_VERSION = 1


def _line(label: str, value) -> str:
    text = value if isinstance(value, str) else (f"{value:,.2f}" if isinstance(value, float) else f"{value:,}")
    return f"{label:<{max(len(label), WIDTH - len(text) - 1)}} {text}"


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1e3:.2f}"


def _stat_block(title: str, key: str, s: Stat) -> list[str]:
    return [f" {title} ".center(WIDTH, "-"),
            _line(f"Mean {key} (ms):", _ms(s.mean)), _line(f"Median {key} (ms):", _ms(s.p50)),
            _line(f"P90 {key} (ms):", _ms(s.p90)), _line(f"P99 {key} (ms):", _ms(s.p99))]


def _slo_text(slo: dict[str, float]) -> str:
    return " ".join(f"{k}<={v * 1e3:g}ms" for k, v in slo.items())


def format_summary(s: Summary, load_text: str = "") -> str:
    lines = [" Serving Benchmark Result ".center(WIDTH, "=")]
    if load_text:
        lines.append(_line("Load:", load_text))
    lines += [
        _line("Successful requests:", s.completed),
        _line("Failed requests:", s.failed),
        _line("Benchmark duration (s):", s.duration_s),
        _line("Total input tokens:", s.input_tokens),
        _line("Total generated tokens:", s.output_tokens),
        _line("Request throughput (req/s):", s.request_throughput),
        _line("Output token throughput (tok/s):", s.output_throughput),
        _line("Total token throughput (tok/s):", s.total_token_throughput),
    ]
    if s.goodput is not None:
        lines.append(_line(f"Goodput (req/s) [{_slo_text(s.slo)}]:", s.goodput))
    lines += _stat_block("Time to First Token", "TTFT", s.ttft)
    lines += _stat_block("Time per Output Token (excl. 1st token)", "TPOT", s.tpot)
    lines += _stat_block("Inter-token Latency", "ITL", s.itl)
    lines += _stat_block("End-to-end Latency", "E2EL", s.e2el)
    for error, count in s.errors.items():
        lines.append(f"error x{count}: {error}")
    lines.append("=" * WIDTH)
    return "\n".join(lines)


SWEEP_COLUMNS = ("LOAD", "REQ/S", "OUT TOK/S", "TTFT P50", "TTFT P99", "TPOT P50", "TPOT P99", "ITL P99", "GOODPUT", "FAILED")


def format_sweep(runs: list[Run]) -> str:
    """One row per load: throughput and latency percentiles in ms."""
    rows = [SWEEP_COLUMNS]
    for r in runs:
        s = r.summary
        rows.append((r.load.describe(), f"{s.request_throughput:.2f}", f"{s.output_throughput:.1f}",
                     _ms(s.ttft.p50), _ms(s.ttft.p99), _ms(s.tpot.p50), _ms(s.tpot.p99), _ms(s.itl.p99),
                     "-" if s.goodput is None else f"{s.goodput:.2f}", str(s.failed)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(SWEEP_COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)


def to_json(runs: list[Run], config: dict) -> dict:
    """``{"version", "config", "runs": [{"load", "summary", "requests"}]}``; times in seconds."""
    return {
        "version": JSON_SCHEMA_VERSION,
        "config": config,
        "runs": [{"load": {"rate": None if math.isinf(r.load.rate) else r.load.rate, "arrival": r.load.arrival,
                           "concurrency": r.load.concurrency, "warmup": r.load.warmup,
                           "schedule": [[p.rate, p.seconds] for p in r.load.schedule] or None},
                  "started_at": r.started_at, "summary": r.summary.to_json(),
                  "requests": [m.to_json() for m in r.requests]} for r in runs],
    }
