"""Generate with the blocking client: a whole completion, then a stream of chunks.

    ttdist serve                        # in another terminal
    python examples/generate.py [--target 127.0.0.1:50051]
"""

import argparse

from ttdist.client import Client

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--target", default="127.0.0.1:50051")
args = parser.parse_args()

with Client(args.target, timeout=120) as client:
    # The whole completion at once.
    done = client.generate("The capital of France is", max_tokens=16)
    print(repr(done.text))
    print(f"{done.usage.completion_tokens} tokens, finish={done.finish_reason}, replica={done.replica_id}")

    # Tokens as they arrive; the final Completion is on the stream once it has ended.
    stream = client.stream("Once upon a time", max_tokens=32, temperature=0.8, seed=1)
    for chunk in stream:
        print(chunk.text, end="", flush=True)
    print()
    print(f"ttft {stream.completion.timings.ttft_s * 1000:.0f} ms, finish={stream.completion.finish_reason}")

    # Stop early: leaving the loop cancels the request on the server, freeing its KV pages.
    for i, chunk in enumerate(client.stream("Count to one hundred:", max_tokens=500)):
        if i == 4:
            break
