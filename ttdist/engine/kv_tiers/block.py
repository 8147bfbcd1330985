"""One page of KV held off the chips: what it holds, whose it is, and a checksum over its bytes.

``payload`` is the page as the runner read it from the chips (every layer's K and V, each chip's
part, in the runner's own storage dtype); the tiers treat it as opaque bytes. ``checksum`` is
taken when the page is read and checked before a restore writes it back: a block whose bytes no
longer match is never used (the prompt is recomputed instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash


def checksum(payload: np.ndarray) -> int:
    """xxh3-64 over the payload's bytes, its dtype and its shape."""
    h = xxhash.xxh3_64()
    h.update(f"{payload.dtype.str}{payload.shape}".encode())
    h.update(np.ascontiguousarray(payload).view(np.uint8).reshape(-1).data)
    return h.intdigest()


@dataclass(frozen=True)
class KvBlock:
    """Page ``block_hash`` (the chained hash of its tokens and every token before them)."""

    block_hash: int
    token_ids: tuple[int, ...]
    payload: np.ndarray
    checksum: int

    @classmethod
    def of(cls, block_hash: int, token_ids, payload: np.ndarray) -> "KvBlock":
        payload = np.ascontiguousarray(payload)
        return cls(block_hash, tuple(int(t) for t in token_ids), payload, checksum(payload))

    @property
    def nbytes(self) -> int:
        return int(self.payload.nbytes)

    def intact(self) -> bool:
        return checksum(self.payload) == self.checksum

    def holds(self, block_hash: int, token_ids) -> bool:
        """This block is page ``block_hash`` of exactly these tokens (a hash collision is a miss)."""
        return self.block_hash == block_hash and self.token_ids == tuple(token_ids)
