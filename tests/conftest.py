import os

import pytest

from tests.support.checkpoints import TinyCheckpoints

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> TinyCheckpoints:
    """Tiny random Llama checkpoints by their arguments, each written once per session."""
    return TinyCheckpoints(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoints):
    """The tiny random Llama (SmolLM2's vocabulary and tokenizer, seed 3) clusters serve in tests."""
    return tiny_checkpoints(seed=3)
