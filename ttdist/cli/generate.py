"""``ttdist generate``: send one prompt to the router and stream the text to the terminal."""

from __future__ import annotations

import argparse
import json
import sys

from ttdist.cli import EXIT_USAGE, CommandError, add_connection_args, client_from_args

EXAMPLES = """examples:
  ttdist generate "The capital of France is" --max-tokens 16
  ttdist generate --chat "Write a haiku about rain."
  ttdist generate --chat "Hi" --system "You answer in French."
  ttdist generate "Tell me a story" -n 200 --temperature 0.8 --seed 1
  echo "Hello" | ttdist generate - --json
  ttdist generate --token-ids 1,2,3 -n 8 --target 10.0.0.5:50051
  ttdist generate "2 + 2 =" -n 4 --logprobs 3          # each token's logprob and the top 3 after the text
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate text from a prompt (streams to the terminal)",
        description="Generate text from a prompt. Text streams to stdout as it arrives; --json prints one "
                    "JSON object with the completion instead. Exit codes: 0 ok, 2 bad request or unknown "
                    "model, 3 router unreachable / overloaded / deadline, 1 other errors.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", help="the prompt text; '-' (or no prompt with piped input) reads stdin")
    p.add_argument("--token-ids", metavar="IDS", help="the prompt as comma-separated token ids instead of text")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message: the server renders it with the model's chat template")
    p.add_argument("--system", metavar="TEXT", help="with --chat: a system message before the prompt")
    p.add_argument("-n", "--max-tokens", type=int, metavar="N", help="most tokens to generate (default: server's)")
    p.add_argument("-t", "--temperature", type=float, help="0 = greedy (default: the model's, else 0)")
    p.add_argument("--top-k", type=int, help="sample from the k most likely tokens; 0 = off (default: the model's, else 0)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass; 1 = off (default: the model's, else 1)")
    p.add_argument("--repetition-penalty", type=float, metavar="R",
                   help="Hugging Face's, over prompt and output tokens; > 0, 1 = off (default: the model's, else 1)")
    p.add_argument("--presence-penalty", type=float, metavar="P", help="OpenAI's, over output tokens, in [-2, 2]")
    p.add_argument("--frequency-penalty", type=float, metavar="F", help="OpenAI's, over output tokens, in [-2, 2]")
    p.add_argument("--logit-bias", action="append", default=[], metavar="ID=BIAS",
                   help="add BIAS (in [-100, 100]) to token ID's logit (repeatable)")
    p.add_argument("--min-p", type=float, help="drop tokens below MIN_P times the top probability, in [0, 1]")
    p.add_argument("--bad-word", action="append", default=[], metavar="TEXT",
                   help="a word the output may not contain (repeatable; vLLM's bad_words)")
    p.add_argument("--min-tokens", type=int, help="EOS and stop ids cannot end the output before this many tokens")
    p.add_argument("--seed", type=int, help="seed for reproducible sampling")
    p.add_argument("--logprobs", type=int, metavar="N",
                   help="per generated token its logprob and the N most likely tokens (0..20), printed after the text "
                        "(--json: in the object)")
    p.add_argument("--prompt-logprobs", type=int, metavar="N",
                   help="the same for every prompt token after the first (0..20)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--stop-token-id", action="append", type=int, default=[], metavar="ID",
                   help="stop token id (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")
    p.add_argument("--model", help="model id (default: the served model)")
    p.add_argument("--request-id", help="your own request id (default: a random one)")
    p.add_argument("--json", action="store_true", help="print the completion as one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="print token counts and timings to stderr")
    add_connection_args(p)
    p.set_defaults(func=run)


def _prompt(args: argparse.Namespace) -> tuple[str | None, list[int] | None]:
    if args.token_ids is not None:
        if args.prompt is not None:
            raise CommandError("give a prompt or --token-ids, not both", EXIT_USAGE)
        try:
            ids = [int(t) for t in args.token_ids.replace(" ", "").split(",") if t]
        except ValueError:
            raise CommandError(f"--token-ids must be comma-separated integers, got {args.token_ids!r}",
                               EXIT_USAGE) from None
        return None, ids
    prompt = args.prompt
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        prompt = sys.stdin.read()
    if not prompt:
        raise CommandError("a prompt is required (as an argument, or '-' to read it from stdin)", EXIT_USAGE)
    return prompt, None


def _options(args: argparse.Namespace) -> dict:
    options = {
        "max_tokens": args.max_tokens, "temperature": args.temperature, "top_k": args.top_k,
        "top_p": args.top_p, "seed": args.seed, "stop": args.stop, "stop_token_ids": args.stop_token_id,
        "ignore_eos": args.ignore_eos, "model": args.model, "request_id": args.request_id,
        "repetition_penalty": args.repetition_penalty, "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty, "min_p": args.min_p, "min_tokens": args.min_tokens,
        "logit_bias": _logit_bias(args.logit_bias) or None, "logprobs": args.logprobs,
        "prompt_logprobs": args.prompt_logprobs, "bad_words": args.bad_word or None,
    }
    return {k: v for k, v in options.items() if v is not None}


def _logit_bias(pairs: list[str]) -> dict[int, float]:
    out = {}
    for pair in pairs:
        token, _, bias = pair.partition("=")
        try:
            out[int(token)] = float(bias)
        except ValueError:
            raise CommandError(f"--logit-bias takes ID=BIAS (e.g. 50256=-100), got {pair!r}", EXIT_USAGE) from None
    return out


def _summary(done) -> str:
    t = done.timings
    rate = f" · {done.usage.completion_tokens / t.total_s:.1f} tok/s" if t.total_s > 0 else ""
    return (f"[{done.usage.completion_tokens} tokens · prompt {done.usage.prompt_tokens} "
            f"(cached {done.usage.cached_tokens}) · finish {done.finish_reason} · replica {done.replica_id} · "
            f"ttft {t.ttft_s * 1000:.0f} ms{rate}]")


def _calls(client, args: argparse.Namespace, prompt, token_ids):
    """The (unary, streaming) calls for the prompt: plain generation, or a chat with --chat."""
    if args.system is not None and not args.chat:
        raise CommandError("--system needs --chat", EXIT_USAGE)
    if not args.chat:
        return (lambda **o: client.generate(prompt, token_ids=token_ids, **o),
                lambda **o: client.stream(prompt, token_ids=token_ids, **o))
    if token_ids is not None:
        raise CommandError("--chat takes a text prompt, not --token-ids", EXIT_USAGE)
    messages = ([{"role": "system", "content": args.system}] if args.system is not None else []) + [
        {"role": "user", "content": prompt}]
    return lambda **o: client.chat(messages, **o), lambda **o: client.stream_chat(messages, **o)


def run(args: argparse.Namespace) -> int:
    from ttdist.client import InvalidRequest

    prompt, token_ids = _prompt(args)
    with client_from_args(args) as client:
        unary, streaming = _calls(client, args, prompt, token_ids)
        try:
            if args.json:
                done = unary(**_options(args))
                print(json.dumps(done.to_json()))
            else:
                done = _stream(streaming(**_options(args)))
                _print_logprobs(done)
        except InvalidRequest as e:
            if e.field is None or e.request_id is not None:
                raise
            flag = "prompt" if e.field.startswith(("prompt", "messages")) else \
                "--" + e.field.split("[")[0].replace("_", "-")
            raise CommandError(f"{flag}: {e.message}", EXIT_USAGE) from None
    if args.verbose:
        print(_summary(done), file=sys.stderr)
    return 0


def _print_logprobs(done) -> None:
    """One line per token: where it is, its id and logprob, then the top ids with theirs."""
    for title, rows, first in (("prompt logprobs", done.prompt_logprobs, 1), ("logprobs", done.logprobs, 0)):
        if not rows:
            continue
        print(f"{title} (position, token id, logprob, top: id logprob ...):")
        for i, lp in enumerate(rows):
            top = "  ".join(f"{t} {v:.4f}" for t, v in lp.top)
            print(f"{i + first:>5} {lp.token_id:>8} {lp.logprob:>10.4f}" + (f"   top: {top}" if top else ""))


def _stream(stream):
    wrote = ""
    try:
        for chunk in stream:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            wrote = chunk.text or wrote
    finally:
        stream.close()
    if not wrote.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    return stream.completion
