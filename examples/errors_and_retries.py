"""Typed errors, deadlines, retries and aborting a request by id.

    python examples/errors_and_retries.py [--target 127.0.0.1:50051]
"""

import argparse

from ttdist.client import (
    Client,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    Overloaded,
    RetryPolicy,
    Unavailable,
)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--target", default="127.0.0.1:50051")
args = parser.parse_args()

# Retry UNAVAILABLE (router starting, no replica ready yet) for up to ~10 attempts.
retry = RetryPolicy(max_attempts=10, initial_backoff_s=0.2, max_backoff_s=2.0)
with Client(args.target, retry=retry, timeout=120) as client:
    try:
        client.generate("Hello", temperature=-1)
    except InvalidRequest as e:
        print(f"invalid request ({e.field}): {e}")

    try:
        client.generate("Hello", model="no-such-model")
    except NotFound as e:
        print(f"not found: {e}")

    try:
        client.generate("Write a very long story", max_tokens=4000, ignore_eos=True, timeout=0.05)
    except DeadlineExceeded as e:
        print(f"deadline: {e}")
    except (Overloaded, Unavailable) as e:
        print(f"try again later: {e}")

    # Abort from anywhere that knows the request id (here: the same client).
    stream = client.stream("Tell me everything", max_tokens=1000, ignore_eos=True)
    next(stream)
    print("aborted:", client.abort(stream.request_id))
    print("finish:", stream.final().finish_reason)
