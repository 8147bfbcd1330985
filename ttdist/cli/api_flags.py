"""The public-API flags of ``ttdist serve``: HTTP port, API keys, TLS, chat template, --insecure.

Keys come from ``--api-key`` (repeatable), ``--api-key-file`` (one per line) and the
``TTDIST_API_KEY`` environment variable, all together; they are read here, once.
"""

from __future__ import annotations

import argparse
import os

from ttdist.cli import EXIT_USAGE, CommandError

KEY_ENV = "TTDIST_API_KEY"


def add_api_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("public API (OpenAI HTTP, API keys, TLS)")
    group.add_argument("--http-port", type=int, default=8000,
                       help="OpenAI-compatible HTTP port (default %(default)s; 0 = any free; -1 = no HTTP)")
    group.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="require 'Authorization: Bearer KEY' on gRPC and HTTP (repeatable; env "
                            f"{KEY_ENV} adds one); health checks stay open")
    group.add_argument("--api-key-file", metavar="FILE", help="API keys, one per line")
    group.add_argument("--tls-cert", metavar="PEM", help="serve gRPC and HTTP over TLS with this certificate chain")
    group.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    group.add_argument("--tls-client-ca", metavar="PEM",
                       help="require client certificates signed by this CA (mutual TLS)")
    group.add_argument("--chat-template", metavar="FILE",
                       help="jinja chat template to use instead of the checkpoint's own")
    group.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback --host without an API key (anyone who can reach it may use it)")


def api_from_args(args: argparse.Namespace):
    """The ``ApiConfig`` the flags describe (checked later with the rest of the ClusterConfig)."""
    from ttdist.runtime.api_config import ApiConfig, ApiConfigError, read_key_file

    keys = list(args.api_key)
    try:
        if args.api_key_file:
            keys.extend(read_key_file(args.api_key_file))
    except ApiConfigError as err:
        raise CommandError(str(err), EXIT_USAGE) from None
    if os.environ.get(KEY_ENV):
        keys.append(os.environ[KEY_ENV].strip())
    if args.http_port < -1:
        raise CommandError(f"--http-port must be -1 (off) or a port in 0..65535, got {args.http_port}", EXIT_USAGE)
    return ApiConfig(
        http_port=None if args.http_port == -1 else args.http_port, api_keys=tuple(dict.fromkeys(keys)),
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        chat_template=args.chat_template, insecure=args.insecure,
    )
