"""``ttdist status``: the cluster's replicas, meshes, KV pages and load, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ttdist.cli import EXIT_USAGE, CommandError, add_connection_args, client_from_args
from ttdist.dashboard.replica_state import ReplicaState

COLUMNS = ("REPLICA", "STATE", "MESH", "BACKEND", "NODE", "PID", "KV PAGES FREE", "KV BUDGET", "DRAM/CHIP W+KV+OTHER",
           "RUNNING", "WAITING", "TOK/S")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "status", help="show the cluster's replicas, meshes, KV pages and load",
        description="Show every replica the router knows (and, on a cluster of several models, each model's "
                    "pool and a MODEL column): state, mesh, backend, node, KV pages free of "
                    "total, running and waiting requests, tokens per second. A replica whose KV pages are "
                    "split into user groups (a Galaxy's column groups) gets a line below its row with "
                    "each group's free pages, and a replica with KV tiers a line with what its host and node tiers hold.",
        epilog="examples:\n  ttdist status\n  ttdist status --json\n  ttdist status --watch 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    add_connection_args(p)
    p.set_defaults(func=run)


def _budget(r) -> str:
    return f"{r.kv_pages_budget}{' (host cap)' if r.kv_pages_capped_by_host else ''}" if r.kv_pages_budget else "-"


def _dram(r) -> str:
    if not r.dram_total_bytes:
        return "-"
    gib = 2**30
    return (f"{r.dram_weights_bytes / gib:.2f}+{r.dram_kv_bytes / gib:.2f}+{r.dram_other_bytes / gib:.2f}"
            f" of {r.dram_total_bytes / gib:.0f} GiB")


def _user_groups(r) -> str:
    """A replica whose KV pages are split into user groups (a Galaxy's columns): how many, each one's free pages."""
    if r.kv_user_groups <= 1:
        return ""
    free = "/".join(str(n) for n in r.kv_pages_free_per_group) or "-"
    return f"{r.kv_user_groups} user groups, free {free}"


def _kv_tiers(r) -> str:
    """A replica with KV tiers: what each holds of its capacity, its hits and what restores saved."""
    t = r.kv_tiers
    if not t.enabled:
        return ""
    mib = 2**20

    def tier(name, c):
        return f"{name} {c.pages} pages {c.bytes / mib:.0f}/{c.capacity_bytes / mib:.0f} MiB, {c.hits} hits" if c.capacity_bytes else ""

    parts = [p for p in (tier("host", t.host), tier("node", t.node)) if p]
    return (f"KV tiers: {'; '.join(parts) or 'none'}; offloaded {t.offloaded_pages}, restored {t.restored_pages} pages "
            f"({t.restored_tokens} tokens), {t.restore_fallbacks} fallbacks")


def _row(r) -> tuple[str, ...]:
    pct = f" ({100 * r.kv_pages_free / r.kv_pages_total:.0f}%)" if r.kv_pages_total else ""
    return (r.replica_id, r.state, r.mesh, r.backend, r.node_id[:12], str(r.pid),
            f"{r.kv_pages_free}/{r.kv_pages_total}{pct}", _budget(r), _dram(r), str(r.running), str(r.waiting),
            f"{r.tokens_per_second:.1f}")


def _aligned(row: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()


def _autoscale(a, several: bool) -> list[str]:
    """A model's pool: its bounds and signal (``several`` models: named), then its last scaling
    decisions with their reasons."""
    label = f"autoscale {a.model}" if several else "autoscale"
    lines = [f"{label}: {a.replicas} replicas (min {a.min_replicas}, max {a.max_replicas}), target "
             f"{a.signal} {a.target:g}; {a.scale_ups_total} up, {a.scale_downs_total} down"]
    for d in a.decisions[-5:]:
        lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(d.time))} {d.previous} -> {d.replicas}: {d.reason}")
    return lines


def format_table(status) -> str:
    """The status as aligned text: a header line, then one row per replica (and below a replica
    whose KV pages are split into user groups, each group's free pages)."""
    ready = sum(r.state == ReplicaState.READY for r in status.replicas)
    lines = [f"model: {status.model or '-'}   policy: {status.policy or '-'}   "
             f"replicas: {len(status.replicas)} ({ready} ready)"]
    if len(status.models) > 1:   # several models: one line each with its pool
        for m in status.models:
            pool = [r for r in status.replicas if r.model == m.id]
            up = sum(r.state == ReplicaState.READY for r in pool)
            lines.append(f"  {m.id}: {len(pool)} replica(s) ({up} ready), max context {m.max_context}")
    if status.generation_defaults:   # what a request that leaves these fields out gets
        lines.append("generation defaults: " + " ".join(f"{k}={v:g}" for k, v in status.generation_defaults.items()))
    for a in status.autoscale:   # one per autoscaled model
        lines += _autoscale(a, len(status.models) > 1)
    if not status.replicas:
        return "\n".join(lines + ["no replicas registered yet"])
    several = len(status.models) > 1   # a MODEL column after REPLICA
    columns = (COLUMNS[0], "MODEL", *COLUMNS[1:]) if several else COLUMNS
    rows = [(_row(r)[0], r.model or "-", *_row(r)[1:]) if several else _row(r) for r in status.replicas]
    widths = [max(len(row[i]) for row in (columns, *rows)) for i in range(len(columns))]
    pages_at = sum(w + 2 for w in widths[:columns.index("KV PAGES FREE")])
    lines += ["", _aligned(columns, widths)]
    for row, r in zip(rows, status.replicas):
        lines.append(_aligned(row, widths))
        if groups := _user_groups(r):
            lines.append(" " * pages_at + groups)   # under the replica's KV pages
        if tiers := _kv_tiers(r):
            lines.append(" " * pages_at + tiers)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.watch is not None and not args.watch > 0:
        raise CommandError(f"--watch must be a positive number of seconds, got {args.watch}", EXIT_USAGE)
    with client_from_args(args) as client:
        while True:
            status = client.cluster_status()
            if args.json:
                text = json.dumps(status.to_json())
            else:
                text = format_table(status)
            if args.watch is not None and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text, flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
