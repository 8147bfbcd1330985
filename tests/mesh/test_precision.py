"""Block-float emulation: shared exponent per 16 values, round-trip error within the bound."""

import numpy as np
import pytest
import torch

from ttdist.mesh.precision import DType, block_float_round, quantize


@pytest.mark.parametrize("dtype", [DType.bfloat8_b, DType.bfloat4_b])
def test_round_trip_error_within_half_an_ulp_of_the_block_max(dtype):
    torch.manual_seed(0)
    x = torch.randn(64, 256) * torch.logspace(-3, 3, 256)  # blocks of very different scale
    q = quantize(x, dtype)
    blocks_x = x.reshape(64, 16, 16)
    blocks_err = (q - x).abs().reshape(64, 16, 16)
    bound = blocks_x.abs().amax(-1, keepdim=True) * 2.0 ** -dtype.mantissa_bits
    assert (blocks_err <= bound * (1 + 1e-6)).all()
    assert (blocks_err > 0).any()  # it really rounds


def test_values_share_one_exponent_per_block_of_16():
    x = torch.tensor([[1.0] + [1e-3] * 15 + [1e-3] * 16])
    q = block_float_round(x, 7)
    assert torch.all(q[0, 1:16] == 0)  # tiny values next to a 1.0 underflow in its block
    assert torch.allclose(q[0, 16:], x[0, 16:], rtol=2**-6)  # their own block keeps them


def test_bfloat16_and_storage_sizes():
    x = torch.tensor([1.0 + 2**-10])
    assert quantize(x, DType.bfloat16).item() == 1.0
    assert DType.bfloat8_b.bytes_per_element == pytest.approx(1.0625)
    assert DType.bfloat4_b.bytes_per_element == pytest.approx(0.5625)
    with pytest.raises(ValueError, match="unknown dtype"):
        DType.parse("fp8")
    assert np.isfinite(quantize(torch.zeros(3, 20), DType.bfloat4_b).numpy()).all()
