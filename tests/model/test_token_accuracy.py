"""Token accuracy counted as tt_transformers counts it (its TokenAccuracy.compute_accuracy and
test_accuracy.py): top-1 when the device's argmax is the reference's top-1, top-5 when it is among
the reference's top-5 (torch.topk of the reference's softmax)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ttdist.model.token_accuracy import reference_top5, token_accuracy


def test_reference_top5_is_torch_topk_of_the_softmax():
    logits = np.random.default_rng(0).normal(size=(64, 1000)).astype(np.float32)
    want = torch.topk(torch.softmax(torch.from_numpy(logits), -1), k=5, dim=-1).indices.numpy()
    assert np.array_equal(reference_top5(logits), want)


def tt_transformers_counts(predicted: np.ndarray, top5: np.ndarray) -> tuple[float, float]:
    """tt_transformers' loop, verbatim in substance."""
    count = count_t5 = 0
    for i, token in enumerate(predicted):
        count += int(top5[i, 0] == token)
        count_t5 += int(token in top5[i, :])
    return count / len(predicted), count_t5 / len(predicted)


def test_counts_equal_tt_transformers_loop():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(200, 50)).astype(np.float32)
    device = ref + rng.normal(scale=0.6, size=ref.shape).astype(np.float32)
    top5 = reference_top5(ref)
    got = token_accuracy(device.argmax(-1), top5)
    assert (got.top1, got.top5) == pytest.approx(tt_transformers_counts(device.argmax(-1), top5))
    assert 0.2 < got.top1 < got.top5 < 1.0 and got.positions == 200


def test_top5_asks_whether_the_device_token_is_in_the_reference_top5():
    # the reference ranks tokens 0..5 in order; the device picks token 4 (5th of the reference):
    # top-5 yes, top-1 no. Token 5 (6th) scores neither, even though the device's own top-5 would
    # hold the reference's top-1 token.
    ref = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 0.0]] * 2, dtype=np.float32)
    got = token_accuracy(np.array([4, 5]), reference_top5(ref))
    assert (got.top1, got.top5) == (0.0, 0.5)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="reference top-5 must be \\[3, 5\\]"):
        token_accuracy(np.zeros(3, dtype=np.int64), np.zeros((2, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="vocab >= 5"):
        reference_top5(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no positions"):
        token_accuracy(np.zeros(0, dtype=np.int64), np.zeros((0, 5), dtype=np.int64))
