"""``ttdist bench``: a serving benchmark against a running cluster (gRPC or the OpenAI HTTP API)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys

from ttdist.cli import EXIT_FAILED, EXIT_USAGE, CommandError, add_connection_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark a running cluster: TTFT, TPOT, ITL, throughput, goodput",
        description="Send a workload to a running ttdist router and report what its users see: time to first "
                    "token, time per output token, inter-token and end-to-end latency (mean, median, P90, P99), "
                    "request and token throughput, and goodput under SLOs. Load by request rate (Poisson or "
                    "fixed intervals) or by concurrency; --sweep runs several rates and prints a table.",
        epilog="examples:\n  ttdist bench --num-prompts 200 --request-rate 8 --slo ttft=200ms,tpot=50ms\n"
               "  ttdist bench --max-concurrency 32 --input-len 64..512 --output-len exp:128 --json out.json\n"
               "  ttdist bench --workload shared-prefix --num-prefixes 8 --prompts-per-prefix 32 --prefix-len 1024\n"
               "  ttdist bench --backend openai --base-url http://127.0.0.1:8000 --vocab-size 49152 --sweep 1,2,4,8 "
               "--plot bench.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    api = p.add_argument_group("target")
    api.add_argument("--backend", choices=("grpc", "openai"), default="grpc",
                     help="grpc (the router's gRPC API, --target) or openai (/v1/completions, --base-url)")
    api.add_argument("--base-url", default=os.environ.get("TTDIST_OPENAI_URL", "http://127.0.0.1:8000"),
                     help="OpenAI API base URL (default %(default)s)")
    api.add_argument("--model", default="", help="model id for the OpenAI API (default: the one it serves)")
    work = p.add_argument_group("workload")
    work.add_argument("--workload", choices=("random", "shared-prefix", "jsonl"), default="random")
    work.add_argument("--num-prompts", type=int, help="requests per run (default 100; a --rate-schedule sets it)")
    work.add_argument("--input-len", default="128", help="prompt tokens: N, LO..HI, normal:MEAN,STD or exp:MEAN")
    work.add_argument("--output-len", default="128", help="tokens to generate, same forms (default %(default)s)")
    work.add_argument("--num-prefixes", type=int, default=8, help="shared-prefix: distinct prefixes")
    work.add_argument("--prompts-per-prefix", type=int, default=16, help="shared-prefix: suffixes per prefix")
    work.add_argument("--prefix-len", default="512", help="shared-prefix: prefix tokens (default %(default)s)")
    work.add_argument("--suffix-len", default="64", help="shared-prefix: suffix tokens (default %(default)s)")
    work.add_argument("--dataset", metavar="FILE", help="jsonl: one {\"prompt\": ...} or {\"prompt_token_ids\": [...]} per line")
    work.add_argument("--vocab-size", type=int, help="vocabulary for random token ids (default: the served model's; "
                                                     "required with --backend openai)")
    work.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at EOS (default: generate "
                                                                   "exactly the output length)")
    work.add_argument("--seed", type=int, default=0)
    load = p.add_argument_group("load")
    load.add_argument("--request-rate", type=float, default=math.inf,
                      help="requests per second (default inf: all at once, capped by --max-concurrency)")
    load.add_argument("--rate-schedule", metavar="RATE:SECONDS,...",
                      help="phases of request rates in turn, e.g. 1:10,6:20,1:20 (a rising then falling load; "
                           "each sends round(rate*seconds) requests, rate 0 pauses)")
    load.add_argument("--arrival", choices=("poisson", "fixed"), default="poisson", help="inter-arrival times")
    load.add_argument("--max-concurrency", type=int, help="most requests in flight")
    load.add_argument("--sweep", metavar="RATES", help="comma-separated request rates to run in turn (e.g. 1,2,4,inf)")
    load.add_argument("--warmup", type=int, default=1, help="warm-up requests before measuring (default %(default)s)")
    out = p.add_argument_group("output")
    out.add_argument("--slo", help="goodput SLOs, e.g. ttft=200ms,tpot=50ms (keys ttft, tpot, itl, e2el)")
    out.add_argument("--json", metavar="FILE", help="write every request and the summaries as JSON")
    out.add_argument("--plot", metavar="FILE.png", help="latency CDFs and throughput over time")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_connection_args(p)
    p.set_defaults(func=run)


def _loads(args):
    from ttdist.loadgen import Load, LoadError, parse_schedule

    if args.rate_schedule:
        if args.sweep or not math.isinf(args.request_rate) or args.num_prompts is not None:
            raise CommandError("--rate-schedule: sets the rates and the request count; leave out --sweep, "
                               "--request-rate and --num-prompts", EXIT_USAGE)
        try:
            load = Load(arrival=args.arrival, concurrency=args.max_concurrency, warmup=args.warmup, seed=args.seed,
                        schedule=parse_schedule(args.rate_schedule))
        except LoadError as e:
            raise CommandError(f"--{e.field}: {str(e).split(': ', 1)[1]}", EXIT_USAGE) from None
        args.num_prompts = load.count
        return [load]
    if args.num_prompts is None:
        args.num_prompts = 100
    try:
        rates = [float(r) for r in args.sweep.split(",")] if args.sweep else [args.request_rate]
    except ValueError:
        raise CommandError(f"--sweep: {args.sweep!r} is not a comma-separated list of rates", EXIT_USAGE) from None
    try:
        return [Load(rate=r, arrival=args.arrival, concurrency=args.max_concurrency, warmup=args.warmup, seed=args.seed)
                for r in rates]
    except LoadError as e:
        field = "sweep" if args.sweep and e.field == "request-rate" else e.field
        raise CommandError(f"--{field}: {str(e).split(': ', 1)[1]}", EXIT_USAGE) from None


def _workload(args, vocab: int, count: int, seed: int):
    from ttdist.loadgen import jsonl_requests, parse_length, random_requests, shared_prefix_requests

    out = parse_length("output-len", args.output_len)
    if args.workload == "jsonl":
        if not args.dataset:
            raise CommandError("--dataset: the jsonl workload needs a file", EXIT_USAGE)
        return jsonl_requests(args.dataset, out, seed=seed, limit=count)
    if args.workload == "shared-prefix":
        reqs = shared_prefix_requests(args.num_prefixes, args.prompts_per_prefix, parse_length("prefix-len", args.prefix_len),
                                      parse_length("suffix-len", args.suffix_len), out, vocab=vocab, seed=seed)
        return reqs[:count]
    return random_requests(count, parse_length("input-len", args.input_len), out, vocab=vocab, seed=seed)


def _usage(err) -> CommandError:
    return CommandError(f"--{err.field}: {err.message}", EXIT_USAGE)


def _check(args):
    """Everything that can be checked before connecting; the SLOs and loads."""
    from ttdist.loadgen import WorkloadError, parse_length, parse_slo
    from ttdist.loadgen.metrics import SloError

    try:
        slo = parse_slo(args.slo)
        for flag in ("input_len", "output_len", "prefix_len", "suffix_len"):
            parse_length(flag.replace("_", "-"), getattr(args, flag))
    except SloError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    except WorkloadError as e:
        raise _usage(e) from None
    loads = _loads(args)
    if args.num_prompts < 1:
        raise CommandError(f"--num-prompts: must be at least 1, got {args.num_prompts}", EXIT_USAGE)
    if args.vocab_size is not None and args.vocab_size < 11:
        raise CommandError(f"--vocab-size: must be more than 10, got {args.vocab_size}", EXIT_USAGE)
    if args.backend == "openai" and args.vocab_size is None and args.workload != "jsonl":
        raise CommandError("--vocab-size: the OpenAI API does not publish the vocabulary; give --vocab-size "
                           "for random token prompts", EXIT_USAGE)
    if args.workload == "jsonl":
        try:
            _workload(args, 0, 1, args.seed)
        except WorkloadError as e:
            raise _usage(e) from None
    return slo, loads


def _target(args):
    from ttdist.client import AsyncClient, InvalidRequest, RetryPolicy, TLSConfig
    from ttdist.loadgen.targets import GrpcTarget, OpenAITarget

    ignore_eos = not args.no_ignore_eos
    if args.backend == "openai":
        return OpenAITarget(args.base_url, model=args.model, api_key=args.token, ignore_eos=ignore_eos,
                            timeout=args.timeout)
    try:
        tls = TLSConfig(root_certificates=args.ca_cert, server_name=args.server_name) \
            if args.tls or args.ca_cert or args.server_name else None
        retry = RetryPolicy(max_attempts=None, max_backoff_s=2.0, max_wait_s=args.wait) if args.wait else RetryPolicy()
        client = AsyncClient(args.target, token=args.token, tls=tls, timeout=args.timeout, retry=retry)
    except InvalidRequest as e:
        raise CommandError(f"--target: {e.message}", EXIT_USAGE) from None
    return GrpcTarget(client, ignore_eos=ignore_eos)


async def _bench(args, slo, loads):
    from tqdm import tqdm

    from ttdist.loadgen import WorkloadError, run
    from ttdist.loadgen.report import format_summary

    target = _target(args)
    try:
        vocab = args.vocab_size or await target.vocab_size() or 0
        runs = []
        for i, load in enumerate(loads):
            try:
                warm = _workload(args, vocab, load.warmup, args.seed + 1000 + i) if load.warmup else []
                requests = _workload(args, vocab, args.num_prompts, args.seed + i)
            except WorkloadError as e:
                raise _usage(e) from None
            with tqdm(total=len(requests), desc=load.describe(), unit="req", file=sys.stderr,
                      disable=args.no_progress, leave=False) as bar:
                result = await run(target, requests, load, slo, warmup=warm, progress=bar)
            runs.append(result)
            if len(loads) == 1:
                print(format_summary(result.summary, load.describe()), flush=True)
        return runs
    finally:
        await target.close()


def run(args: argparse.Namespace) -> int:
    from ttdist.loadgen.report import format_sweep, to_json

    slo, loads = _check(args)
    runs = asyncio.run(_bench(args, slo, loads))
    if len(runs) > 1:
        print(format_sweep(runs), flush=True)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("func", "token")}
        config["request_rate"] = None if math.isinf(args.request_rate) else args.request_rate
        with open(args.json, "w") as fh:
            json.dump(to_json(runs, config), fh, indent=1)
    if args.plot:
        from ttdist.loadgen.plot import plot

        plot(runs, args.plot)
    failed = [r for r in runs if r.summary.completed == 0]
    if failed:
        errors = failed[0].summary.errors
        raise CommandError(f"every request failed: {next(iter(errors), 'no tokens')}", EXIT_FAILED)
    return 0
