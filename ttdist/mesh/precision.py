"""Data formats of Wormhole and their storage cost.

``bfloat8_b`` and ``bfloat4_b`` are block-float formats: each group of 16 consecutive
values (one row of a 16x16 tile face) shares one 8-bit exponent; every value keeps a sign
and a 7-bit (bfp8) or 3-bit (bfp4) mantissa with the leading one explicit. So a value is
stored as ``sign * m * 2**(e - (bits - 1))`` with ``e = floor(log2(max |x| in the block))``
and ``0 <= m < 2**bits``, rounded to nearest. The round-trip error of any value in a block
is at most ``2**(e - bits)``, i.e. ``max|x| * 2**-bits`` (half a unit in the last place).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

BLOCK = 16


class DType(enum.Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    bfloat8_b = "bfloat8_b"
    bfloat4_b = "bfloat4_b"
    uint32 = "uint32"
    int32 = "int32"

    @property
    def bytes_per_element(self) -> float:
        return _BYTES[self]

    @property
    def mantissa_bits(self) -> int:
        return _MANTISSA[self]

    @classmethod
    def parse(cls, text: "str | DType") -> "DType":
        if isinstance(text, DType):
            return text
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(d.value for d in cls)
            raise ValueError(f"unknown dtype {text!r}: use one of {names}") from None


# Block-float formats carry one exponent byte per 16 values.
_BYTES = {
    DType.float32: 4.0,
    DType.bfloat16: 2.0,
    DType.bfloat8_b: 1.0 + 1.0 / BLOCK,
    DType.bfloat4_b: 0.5 + 1.0 / BLOCK,
    DType.uint32: 4.0,
    DType.int32: 4.0,
}
_MANTISSA = {DType.bfloat8_b: 7, DType.bfloat4_b: 3, DType.bfloat16: 8, DType.float32: 24}


def quantize(x, dtype: DType):
    """Round a float torch tensor through ``dtype`` and back to float32 (emulation)."""
    import torch

    if dtype in (DType.float32, DType.uint32, DType.int32):
        return x
    if dtype is DType.bfloat16:
        return x.to(torch.bfloat16).to(x.dtype)
    return block_float_round(x, dtype.mantissa_bits)


def block_float_round(x, bits: int):
    """Shared-exponent rounding over groups of 16 along the last dim (padded with zeros)."""
    import torch

    shape = x.shape
    width = shape[-1]
    pad = (-width) % BLOCK
    flat = x.float()
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    blocks = flat.reshape(*flat.shape[:-1], -1, BLOCK)
    peak = blocks.abs().amax(dim=-1, keepdim=True)
    exponent = torch.floor(torch.log2(torch.where(peak > 0, peak, torch.ones_like(peak))))
    step = torch.pow(2.0, exponent - (bits - 1))
    limit = 2**bits - 1
    mantissa = torch.clamp(torch.round(blocks.abs() / step), max=limit)
    rounded = torch.sign(blocks) * mantissa * step
    rounded = torch.where(peak > 0, rounded, torch.zeros_like(rounded))
    out = rounded.reshape(*flat.shape[:-1], width + pad)[..., :width]
    return out.to(x.dtype).reshape(shape)



def block_float_round_numpy(x, bits: int):
    """``block_float_round`` on a numpy array (float32 out): the same groups of 16 along the
    last dim, the same shared exponent and mantissa rounding, for code that runs without torch."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    width = x.shape[-1]
    pad = (-width) % BLOCK
    flat = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]) if pad else x
    blocks = flat.reshape(*flat.shape[:-1], -1, BLOCK)
    peak = np.abs(blocks).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.floor(np.log2(np.where(peak > 0, peak, 1.0)))
        step = np.exp2(exponent - (bits - 1)).astype(np.float32)
        mantissa = np.minimum(np.round(np.abs(blocks) / step), 2**bits - 1)
    rounded = np.where(peak > 0, np.sign(blocks) * mantissa * step, 0.0).astype(np.float32)
    return rounded.reshape(flat.shape)[..., :width].reshape(x.shape)

# ---------------------------------------------------------------------- precision per tensor group
GROUPS = ("wqkv", "wo", "ff1_ff3", "ff2", "lm_head", "kv_cache", "embedding", "norms")
_GROUP_OF = {"wqkv": "wqkv", "wo": "wo", "w1": "ff1_ff3", "w3": "ff1_ff3", "w2": "ff2", "lm_head": "lm_head",
             "embedding": "embedding", "attention_norm": "norms", "ffn_norm": "norms", "norm": "norms"}


@dataclass(frozen=True)
class Precision:
    """The data format of each tensor group, as tt_transformers' decoder optimizations set it.

    Groups: attention QKV and output weights, FF1/FF3 (gate, up), FF2 (down), the LM head, the
    KV cache, the embedding table and the norms. The simulator emulates each format exactly
    (block-float rounding on upload); ttnn stores each tensor in that dtype.
    """

    wqkv: DType = DType.bfloat16
    wo: DType = DType.bfloat16
    ff1_ff3: DType = DType.bfloat16
    ff2: DType = DType.bfloat16
    lm_head: DType = DType.bfloat16
    kv_cache: DType = DType.bfloat16
    embedding: DType = DType.bfloat16
    norms: DType = DType.bfloat16
    name: str = "custom"

    def weight_dtype(self, kind: str) -> DType:
        """The dtype of weight kind ``kind`` (a layout plan name such as ``w1`` or ``wqkv``)."""
        try:
            return getattr(self, _GROUP_OF[kind])
        except KeyError:
            raise ValueError(f"no precision group for weight {kind!r}") from None

    @property
    def activations(self) -> DType:
        """The activation format a backend that stores activations (ttnn) keeps: float32 when every
        matmul weight is float32 (``--dtype float32``), else bf16 (the hardware presets)."""
        weights = (self.wqkv, self.wo, self.ff1_ff3, self.ff2, self.lm_head)
        return DType.float32 if all(d is DType.float32 for d in weights) else DType.bfloat16

    @property
    def needs_float32_storage(self) -> bool:
        return any(getattr(self, g) is DType.float32 for g in GROUPS if g != "kv_cache")

    def describe(self) -> str:
        return f"{self.name}: " + ", ".join(f"{g} {getattr(self, g).value}" for g in GROUPS)

    @classmethod
    def uniform(cls, dtype: "DType | str") -> "Precision":
        """Every matmul weight in ``dtype``; embedding, norms and KV in bf16 (all float32 for float32)."""
        d = DType.parse(dtype)
        if d is DType.float32:
            return cls(**{g: d for g in GROUPS}, name="float32")
        return cls(wqkv=d, wo=d, ff1_ff3=d, ff2=d, lm_head=d, name=d.value)

    @classmethod
    def parse(cls, text: "str | DType | Precision") -> "Precision":
        """A preset name (``accuracy``, ``performance``) or a dtype applied to every matmul."""
        if isinstance(text, Precision):
            return text
        if isinstance(text, str) and text in PRESETS:
            return PRESETS[text]
        try:
            return cls.uniform(text)
        except ValueError:
            names = ", ".join([*PRESETS, *(d.value for d in DType if d not in (DType.uint32, DType.int32))])
            raise ValueError(f"unknown precision {text!r}: use one of {names}") from None


B16, B8, B4 = DType.bfloat16, DType.bfloat8_b, DType.bfloat4_b
PRESETS = {
    # tt_transformers ModelOptimizations.accuracy (models under 70B): bf16 attention, bfp8 MLP
    "accuracy": Precision(wqkv=B16, wo=B16, ff1_ff3=B8, ff2=B8, lm_head=B8, kv_cache=B16, name="accuracy"),
    # ModelOptimizations.performance: bfp4 FF1/FF3, bfp8 everything else that is a matmul or cache
    "performance": Precision(wqkv=B8, wo=B8, ff1_ff3=B4, ff2=B8, lm_head=B8, kv_cache=B8, name="performance"),
}
