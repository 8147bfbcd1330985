import numpy as np
import pytest
import torch

from ttdist.model.testing import tiny_llama_checkpoint

MESHES = ["1x1", "1x2", "1x8", "2x4", "8x4"]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return tiny_llama_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def weight_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("weight-cache")


@pytest.fixture(scope="session")
def hf_tiny(tiny_ckpt):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_ckpt, attn_implementation="eager").float().eval()


def pcc(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def causal_mask(t: int) -> torch.Tensor:
    return torch.triu(torch.full((t, t), float("-inf")), diagonal=1)[None, None]
