"""Tiny random Llama checkpoints (Hugging Face folders), each built once per test session.

``TinyCheckpoints`` is what the ``tiny_checkpoints`` fixture (tests/conftest.py) hands out:
``tiny_checkpoints(seed=3)`` returns the folder for those arguments, writing it on first use.
Every folder is named ``tiny-llama``, the model id a cluster serving it reports.
"""

from __future__ import annotations

from pathlib import Path


class TinyCheckpoints:
    def __init__(self, tmp_path_factory):
        self._tmp_path_factory = tmp_path_factory
        self._built: dict[tuple, Path] = {}

    def __call__(self, *, seed: int = 0, with_tokenizer: bool = True, **overrides) -> Path:
        """The checkpoint ``ttdist.model.testing.tiny_llama_checkpoint`` writes for these arguments."""
        key = (seed, with_tokenizer, tuple(sorted(overrides.items())))
        if key not in self._built:
            from ttdist.model.testing import tiny_llama_checkpoint

            folder = self._tmp_path_factory.mktemp("tiny") / "tiny-llama"
            self._built[key] = tiny_llama_checkpoint(folder, seed=seed, with_tokenizer=with_tokenizer, **overrides)
        return self._built[key]
