"""What a benchmark sends: prompts and output lengths, from distributions, shared prefixes or a file.

Lengths are drawn from a distribution given as text:

    128            always 128
    64..256        uniform integers in [64, 256]
    normal:128,32  normal(mean 128, std 32), rounded, at least 1
    exp:128        exponential with mean 128, rounded, at least 1

Random prompts are token ids drawn uniformly from the model's vocabulary (above the first
``RESERVED_IDS`` ids, where special tokens live), so a prompt has exactly the length drawn.
Shared-prefix workloads build N prefixes and M suffixes per prefix; requests are shuffled so
prefixes interleave, as a chat service's system prompts do. A JSONL file has one request per
line: ``{"prompt": "text"}`` or ``{"prompt_token_ids": [...]}``, optionally ``"max_tokens"``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

RESERVED_IDS = 10


class WorkloadError(ValueError):
    """A workload option that cannot be used; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Request:
    prompt: str | tuple[int, ...]
    max_tokens: int
    prompt_len: int                # token ids in the prompt (text prompts: 0 until the server says)


@dataclass(frozen=True)
class LengthDist:
    kind: str                      # fixed, uniform, normal, exp
    a: float
    b: float = 0.0
    text: str = ""

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        if self.kind == "normal":
            return max(1, round(rng.gauss(self.a, self.b)))
        return max(1, round(rng.expovariate(1.0 / self.a)))

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a


_DIST = re.compile(r"^(?:(\d+)|(\d+)\.\.(\d+)|normal:(\d+(?:\.\d+)?),(\d+(?:\.\d+)?)|exp:(\d+(?:\.\d+)?))$")


def parse_length(field: str, text: str) -> LengthDist:
    m = _DIST.match(str(text).strip().replace(" ", ""))
    if not m:
        raise WorkloadError(field, f"{text!r} is not a length: use N, LO..HI, normal:MEAN,STD or exp:MEAN")
    fixed, lo, hi, mean, std, exp = m.groups()
    if fixed is not None:
        dist = LengthDist("fixed", int(fixed), text=text)
    elif lo is not None:
        if int(lo) > int(hi):
            raise WorkloadError(field, f"{text!r}: LO must not exceed HI")
        dist = LengthDist("uniform", int(lo), int(hi), text=text)
    elif mean is not None:
        dist = LengthDist("normal", float(mean), float(std), text=text)
    else:
        dist = LengthDist("exp", float(exp), text=text)
    if dist.a < 1:
        raise WorkloadError(field, f"{text!r}: lengths must be at least 1")
    return dist


def _ids(rng: random.Random, n: int, vocab: int) -> tuple[int, ...]:
    return tuple(rng.randrange(RESERVED_IDS, vocab) for _ in range(n))


def _check_vocab(vocab: int) -> None:
    if vocab <= RESERVED_IDS:
        raise WorkloadError("vocab-size", f"the vocabulary must have more than {RESERVED_IDS} ids, got {vocab}")


def random_requests(count: int, input_len: LengthDist, output_len: LengthDist, *, vocab: int, seed: int = 0) -> list[Request]:
    _check_vocab(vocab)
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = input_len.sample(rng)
        out.append(Request(_ids(rng, n, vocab), output_len.sample(rng), n))
    return out


def shared_prefix_requests(prefixes: int, per_prefix: int, prefix_len: LengthDist, suffix_len: LengthDist,
                           output_len: LengthDist, *, vocab: int, seed: int = 0) -> list[Request]:
    _check_vocab(vocab)
    if prefixes < 1 or per_prefix < 1:
        raise WorkloadError("num-prefixes", "needs at least one prefix and one suffix per prefix")
    rng = random.Random(seed)
    heads = [_ids(rng, prefix_len.sample(rng), vocab) for _ in range(prefixes)]
    out = []
    for head in heads:
        for _ in range(per_prefix):
            prompt = head + _ids(rng, suffix_len.sample(rng), vocab)
            out.append(Request(prompt, output_len.sample(rng), len(prompt)))
    rng.shuffle(out)
    return out


def jsonl_requests(path: str | Path, output_len: LengthDist, *, seed: int = 0, limit: int | None = None) -> list[Request]:
    rng = random.Random(seed)
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise WorkloadError("dataset", f"{path}: {err.strerror or err}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise WorkloadError("dataset", f"{where}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise WorkloadError("dataset", f"{where}: each line must be a JSON object")
        if isinstance(row.get("prompt"), str) and row["prompt"]:
            prompt, n = row["prompt"], 0
        elif isinstance(row.get("prompt_token_ids"), list) and row["prompt_token_ids"] and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in row["prompt_token_ids"]):
            prompt = tuple(row["prompt_token_ids"])
            n = len(prompt)
        else:
            raise WorkloadError("dataset", f"{where}: needs a non-empty \"prompt\" string or \"prompt_token_ids\" list")
        tokens = row.get("max_tokens", row.get("output_len"))
        if tokens is None:
            tokens = output_len.sample(rng)
        elif isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise WorkloadError("dataset", f"{where}: max_tokens must be a positive integer, got {tokens!r}")
        out.append(Request(prompt, tokens, n))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise WorkloadError("dataset", f"{path}: no requests in the file")
    return out
