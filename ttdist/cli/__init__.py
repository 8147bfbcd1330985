"""The ``ttdist`` command: one sub-command per module (serve, launch, generate, status, convert, bench, plan).

Each command module exposes ``register(subparsers)`` (adds its parser and
``set_defaults(func=run)``) and ``run(args) -> int``. ``main`` turns user mistakes and
expected failures into one line on stderr and a non-zero exit code, never a traceback:

    0 success · 1 failed · 2 bad usage or input · 3 server unreachable, overloaded or too slow
    · 130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ttdist import __version__

COMMANDS = ("serve", "launch", "generate", "status", "convert", "bench", "plan")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """An expected failure of a command: printed as one line, then ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that calls the router: where, how (token, TLS), how long, how patiently."""
    group = parser.add_argument_group("connection")
    group.add_argument("--target", default=os.environ.get("TTDIST_TARGET", "127.0.0.1:50051"),
                       help="router address host:port (env TTDIST_TARGET; default %(default)s)")
    group.add_argument("--token", default=os.environ.get("TTDIST_TOKEN"),
                       help="bearer token sent as 'authorization: Bearer ...' (env TTDIST_TOKEN)")
    group.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca-cert)")
    group.add_argument("--ca-cert", metavar="PEM", help="CA certificate file for TLS (implies --tls)")
    group.add_argument("--server-name", metavar="NAME", help="TLS name to check instead of the target's host")
    group.add_argument("--timeout", type=float, metavar="SECONDS", help="deadline for the call (default: none)")
    group.add_argument("--wait", type=float, metavar="SECONDS",
                       help="wait up to SECONDS for the router to come up and a replica to be ready "
                            "(default: a few quick retries, about 3 s)")


_FLAGS = {"target": "--target", "token": "--token", "timeout": "--timeout", "tls": "--tls",
          "tls.root_certificates": "--ca-cert", "retry.max_wait_s": "--wait"}


def client_from_args(args: argparse.Namespace):
    """A Client for the connection flags; bad flags become a CommandError."""
    from ttdist.client import Client, InvalidRequest, RetryPolicy, TLSConfig

    try:
        tls = None
        if args.tls or args.ca_cert or args.server_name:
            tls = TLSConfig(root_certificates=args.ca_cert, server_name=args.server_name)
        retry = RetryPolicy()
        if args.wait is not None:
            retry = RetryPolicy(max_attempts=None, max_backoff_s=2.0, max_wait_s=args.wait)
        return Client(args.target, token=args.token, tls=tls, timeout=args.timeout, retry=retry)
    except InvalidRequest as e:
        raise CommandError(f"{_FLAGS.get(e.field, '--target')}: {e.message}", EXIT_USAGE) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttdist",
        description="Serve tensor-parallel Llama on Tenstorrent meshes as data-parallel replicas on Ray.",
        epilog="Run 'ttdist COMMAND --help' for a command's options. Quick start: 'ttdist serve' in one "
               "terminal, then 'ttdist generate \"Hello\"' in another.",
    )
    parser.add_argument("--version", action="version", version=f"ttdist {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ttdist.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"ttdist.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def _client_error_exit_code(err) -> int:
    from ttdist.client import DeadlineExceeded, InvalidRequest, NotFound, Overloaded, Unavailable

    if isinstance(err, (InvalidRequest, NotFound)):
        return EXIT_USAGE
    if isinstance(err, (Unavailable, Overloaded, DeadlineExceeded)):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ttdist`` console script."""
    from ttdist.client.errors import TtdistError

    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"ttdist {args.command}: error:"
    try:
        return int(args.func(args) or EXIT_OK)
    except CommandError as e:
        print(f"{prefix} {e}", file=sys.stderr)
        return e.exit_code
    except TtdistError as e:
        hint = f" (is the router running at {args.target}?)" if _client_error_exit_code(e) == EXIT_UNAVAILABLE \
            and hasattr(args, "target") else ""
        print(f"{prefix} {e.code.name.lower()}: {e.message}{hint}", file=sys.stderr)
        return _client_error_exit_code(e)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (``ttdist generate ... | head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
