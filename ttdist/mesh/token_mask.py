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
    (chip c's words at ``[c*W, (c+1)*W)``); tokens past the rows' vocabulary are not allowed.
    When ``W`` is a multiple of 32 (a chip's slice a multiple of 1024) the repacking is a 32 x 32 bit
    transpose of each block of words, a few vectorized shifts (~0.1 ms for 32 users of a 49k vocab)."""
    rows = np.ascontiguousarray(rows, dtype=np.int32)
    batch = rows.shape[0]
    words = words_per_chip(width)
    if words % PLANES == 0:
        padded = np.zeros((batch, shards * words), dtype=np.uint32)
        n = min(rows.shape[-1], padded.shape[-1])
        padded[:, :n] = rows[:, :n].view(np.uint32)
        # plane j of chip c is its original words [j * W/32, (j+1) * W/32); word k of every plane forms a
        # 32 x 32 bit block (row j, bit b: local token j*W + 32k + b), whose transpose is device words 32k + b
        blocks = padded.reshape(batch, shards, PLANES, words // PLANES).transpose(0, 1, 3, 2)
        return _transpose32(np.ascontiguousarray(blocks)).reshape(batch, shards * words).view(np.int32).copy()
    bits = np.unpackbits(rows.view(np.uint8), axis=-1, bitorder="little")[:, : width * shards]
    bits = np.pad(bits, ((0, 0), (0, width * shards - bits.shape[-1])))
    planes = bits.reshape(batch, shards, PLANES, words).transpose(0, 1, 3, 2)    # [B, n, W, 32]
    packed = np.packbits(np.ascontiguousarray(planes), axis=-1, bitorder="little")   # [B, n, W, 4]
    return packed.reshape(batch, shards * words * 4).view(np.int32).copy()


_MASKS = {16: 0x0000FFFF, 8: 0x00FF00FF, 4: 0x0F0F0F0F, 2: 0x33333333, 1: 0x55555555}


def _transpose32(a: np.ndarray) -> np.ndarray:
    """Bit transpose of ``[..., 32]`` uint32 blocks: bit c of word r -> bit r of word c."""
    for j, mask in _MASKS.items():
        pairs = a.reshape(*a.shape[:-1], PLANES // (2 * j), 2, j)
        low, high = pairs[..., 0, :], pairs[..., 1, :]
        t = ((low >> np.uint32(j)) ^ high) & np.uint32(mask)
        high ^= t
        low ^= t << np.uint32(j)
        a = pairs.reshape(a.shape)
    return a


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
