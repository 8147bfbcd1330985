"""Many prompts, at most N in flight at a time, results in prompt order.

    python examples/batch.py [--target 127.0.0.1:50051] [--concurrency 4]
"""

import argparse

from ttdist.client import Client, TtdistError

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--target", default="127.0.0.1:50051")
parser.add_argument("--concurrency", type=int, default=4)
args = parser.parse_args()

prompts = [f"Question {i}: what is {i} plus {i}? Answer:" for i in range(10)]
with Client(args.target, timeout=300) as client:
    results = client.generate_batch(prompts, concurrency=args.concurrency, max_tokens=8,
                                    return_exceptions=True)
for prompt, result in zip(prompts, results):
    if isinstance(result, TtdistError):
        print(f"{prompt} -> failed: {result}")
    else:
        print(f"{prompt}{result.text!r}")
