"""Stream several prompts at once with the asyncio client.

    python examples/stream_async.py [--target 127.0.0.1:50051]
"""

import argparse
import asyncio

from ttdist.client import AsyncClient

PROMPTS = ["The sky is", "My favourite food is", "In 1969, humans"]


async def stream_one(client: AsyncClient, n: int, prompt: str) -> str:
    pieces = []
    async for chunk in client.stream(prompt, max_tokens=16):
        pieces.append(chunk.text)
    return f"[{n}] {prompt}{''.join(pieces)!r}"


async def main(target: str) -> None:
    async with AsyncClient(target, timeout=120) as client:
        await client.wait_ready(timeout=60)
        for line in await asyncio.gather(*(stream_one(client, n, p) for n, p in enumerate(PROMPTS))):
            print(line)

        # Cancelling the task cancels the request on the server.
        task = asyncio.create_task(client.generate("Write a long essay", max_tokens=2000))
        await asyncio.sleep(0.2)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            print("cancelled the long request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051")
    asyncio.run(main(parser.parse_args().target))
