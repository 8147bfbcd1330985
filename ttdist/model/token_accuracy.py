"""Teacher-forced token accuracy, counted as tt_transformers counts it.

tt_transformers (``tests/test_accuracy.py`` and ``demo/simple_text_demo.py`` against the
``.refpt`` files of ``tests/generate_reference_outputs.py``) feeds the true text token by token
and, at every position, compares the device's greedy (argmax) token with the top-5 tokens of the
reference model (transformers, float32 on CPU) at that position:

* top-1: the device's token is the reference's top-1 token;
* top-5: the device's token is one of the reference's top-5 tokens.

Only the device's argmax counts; its own top-5 plays no part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP_K = 5


@dataclass(frozen=True)
class TokenAccuracy:
    """Fractions in [0, 1] of ``positions`` teacher-forced positions."""

    top1: float
    top5: float
    positions: int

    def __str__(self) -> str:
        return f"top-1 {self.top1:.1%}, top-5 {self.top5:.1%} over {self.positions} positions"


def reference_top5(logits) -> np.ndarray:
    """The reference's top-5 token ids ``[T, 5]``, best first, from its logits ``[T, vocab]``."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[1] < TOP_K:
        raise ValueError(f"reference logits must be [positions, vocab >= {TOP_K}], got shape {logits.shape}")
    part = np.argpartition(-logits, TOP_K - 1, axis=-1)[:, :TOP_K]
    order = np.argsort(-np.take_along_axis(logits, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def token_accuracy(predicted, reference5) -> TokenAccuracy:
    """Top-1 / top-5 agreement of the device's greedy tokens ``[T]`` with the reference's top-5 ``[T, 5]``."""
    predicted = np.asarray(predicted).reshape(-1)
    reference5 = np.asarray(reference5)
    if reference5.ndim != 2 or reference5.shape != (len(predicted), TOP_K):
        raise ValueError(f"reference top-5 must be [{len(predicted)}, {TOP_K}] for {len(predicted)} predicted "
                         f"tokens, got shape {reference5.shape}")
    if not len(predicted):
        raise ValueError("no positions to score")
    top1 = float((predicted == reference5[:, 0]).mean())
    top5 = float((predicted[:, None] == reference5).any(-1).mean())
    return TokenAccuracy(top1, top5, len(predicted))
