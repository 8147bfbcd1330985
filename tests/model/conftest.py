import pytest


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_checkpoints):
    return tiny_checkpoints(seed=0)


@pytest.fixture(scope="session")
def weight_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("weight-cache")


@pytest.fixture(scope="session")
def hf_tiny(tiny_ckpt):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_ckpt, attn_implementation="eager").float().eval()

