"""Tiny random Llama checkpoints for fast tests (saved as HF safetensors directories)."""

from __future__ import annotations

import shutil
from pathlib import Path

TINY = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_llama_checkpoint(dirpath: str | Path, *, seed: int = 0, with_tokenizer: bool = True, **overrides) -> Path:
    """Write a random LlamaForCausalLM (fp32) to ``dirpath`` and return it.

    The default vocabulary matches SmolLM2 so its tokenizer (copied in when
    ``with_tokenizer``) encodes text for it.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(dirpath)
    path.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # HF initialises norms to 1; random norms test them for real
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    if with_tokenizer and cfg.vocab_size == TINY["vocab_size"]:
        from ttdist.model.smollm2 import tokenizer_dir

        for file in tokenizer_dir().iterdir():
            if file.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(file, path / file.name)
    return path


def numpy_llama_checkpoint(dirpath: str | Path, *, seed: int = 0, **overrides) -> Path:
    """Write a random Llama checkpoint with numpy, safetensors and tokenizers only (no torch).

    For environments without torch (the ttnn one): ``config.json``, ``model.safetensors``
    (float32, HF tensor names) and a byte-level ``tokenizer.json`` whose 256 byte tokens plus
    ``<s>`` / ``</s>`` encode any text. The default vocabulary is 512 (the model's spare ids
    decode to nothing).
    """
    import json

    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from ttdist.model.config import LlamaConfig
    from ttdist.model.weights.hf_checkpoint import expected_shapes

    raw = {**TINY, "vocab_size": 512, "bos_token_id": 256, "eos_token_id": 257, **overrides,
           "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    path = Path(dirpath)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    config = LlamaConfig.from_dir(path)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        if "norm" in name:
            tensors[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            tensors[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<s>", "</s>"])
    tokenizer.save(str(path / "tokenizer.json"))
    return path
