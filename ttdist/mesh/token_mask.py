"""Grammar masks on the mesh: which tokens a user may draw next, as bits each chip unpacks.

The host holds a user's allowed tokens as a bitmask row (llguidance's layout: ``ceil(V / 32)``
int32 words, bit ``t % 32`` of word ``t // 32`` for token ``t``). ``pack`` rewrites the rows
for the chips: each chip's vocab slice of ``width`` logits gets ``W = width / 32`` words in
bit-plane order, word ``w`` bit ``j`` for the slice's column ``j * W + w``, so a chip unpacks
its slice with 32 shifts of its ``[B, W]`` words (plane ``j`` is columns ``j*W .. j*W + W - 1``)
and one concatenation, with no gather. The upload is B x V/32 int32 words, as on the host.

Applying the mask: ``logits + (allowed - 1) * 1e9`` (``OFF``): an allowed logit is unchanged, a
masked one is ~ -1e9, below every real one, so the candidate top-K never draws it (a user's
grammar always allows at least one token). A batch whose users have no grammar skips all of it.
"""

from __future__ import annotations

import numpy as np

PLANES = 32
OFF = 1e9
INPUT_NAME = "input.allowed"   # the step input holding the words (a backend may lay it out for the unpacking ops)


def words_per_chip(width: int) -> int:
    if width % PLANES:
        raise ValueError(f"a chip's vocab slice of {width} logits is not a whole number of {PLANES}-bit words")
    return width // PLANES


def pack(rows: np.ndarray, width: int, shards: int) -> np.ndarray:
    """llguidance bitmask rows ``[B, ceil(V/32)]`` -> the chips' words ``[B, shards * width/32]``
    (chip c's words at ``[c*W, (c+1)*W)``); tokens past the rows' vocabulary are not allowed."""
    rows = np.ascontiguousarray(rows, dtype=np.int32)
    batch = rows.shape[0]
    words = words_per_chip(width)
    bits = np.unpackbits(rows.view(np.uint8), axis=-1, bitorder="little")[:, : width * shards]
    bits = np.pad(bits, ((0, 0), (0, width * shards - bits.shape[-1])))
    planes = bits.reshape(batch, shards, PLANES, words).transpose(0, 1, 3, 2)    # [B, n, W, 32]
    packed = np.packbits(np.ascontiguousarray(planes), axis=-1, bitorder="little")   # [B, n, W, 4]
    return packed.reshape(batch, shards * words * 4).view(np.int32).copy()


def unpack(words: np.ndarray, shards: int) -> np.ndarray:
    """Reference of a chip's unpacking: the chips' words ``[B, n*W]`` -> 0/1 float32 ``[B, n*width]``."""
    out = []
    for part in np.split(np.asarray(words, dtype=np.int32), shards, axis=-1):
        out.append(np.concatenate([(part >> j) & 1 for j in range(PLANES)], axis=-1))
    return np.concatenate(out, axis=-1).astype(np.float32)


def apply(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Reference of the masking: ``logits + (allowed - 1) * OFF`` in float32."""
    return (logits.astype(np.float32) + (allowed.astype(np.float32) - 1.0) * np.float32(OFF)).astype(np.float32)


def all_allowed(batch: int, width: int, shards: int) -> np.ndarray:
    """The words of users without a grammar: every bit set."""
    return np.full((batch, shards * words_per_chip(width)), -1, dtype=np.int32)
