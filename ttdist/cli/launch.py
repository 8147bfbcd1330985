"""``ttdist launch cluster/<spec>.yaml``: run the cluster a spec file describes (foreground).

It runs as ``ttdist serve`` does (``run_cluster``): replica failures on stderr as they happen,
exit code 2 with the reason once no replica of the model can ever start."""

from __future__ import annotations

import argparse

from ttdist.cli import EXIT_USAGE, CommandError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "launch", help="run the cluster described by a spec file (foreground; Ctrl-C stops it)",
        description="Start the replicas, coordinator and router a cluster/*.yaml spec describes, on a local "
                    "Ray cluster or the one at --address (or the spec's 'address').",
        epilog="examples:\n  ttdist launch cluster/local.yaml\n  ttdist launch cluster/tg-4x2x4.yaml --address auto",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="cluster spec file (YAML)")
    p.add_argument("--address", default=None, help="Ray cluster to join (overrides the spec's 'address')")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGINT/SIGTERM, how long streams in flight may take to finish (default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ttdist.cli.serve import run_cluster
    from ttdist.runtime.config import ClusterConfigError
    from ttdist.runtime.cluster_file import load_spec

    try:
        spec = load_spec(args.spec)
    except ClusterConfigError as err:
        raise CommandError(str(err), EXIT_USAGE) from None
    if not args.drain_timeout >= 0:
        raise CommandError(f"--drain-timeout must be >= 0 seconds, got {args.drain_timeout}", EXIT_USAGE)
    return run_cluster(spec.config, args.address or spec.address, args.drain_timeout)
