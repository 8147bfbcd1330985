"""Tokenizer and incremental detokenizer on the SmolLM2 tokenizer."""

from __future__ import annotations

import json
import random

import pytest

from ttdist.engine.tokenizer import Tokenizer, TokenizerError
from ttdist.errors import PermanentError

TEXTS = [
    "Hello, world! The quick brown fox.",
    "naïve café — déjà vu ½ ∑ ≠ ∞",
    "日本語のテキストと中文字符，还有한국어 문장.",
    "emoji 🚀🎉👩‍👩‍👧‍👦 and 🇫🇷 flags",
    "  leading spaces\n\ttabs\nand\r\nnewlines  ",
    "mixed: ab😀c d𝔘𝔫𝔦𝔠𝔬𝔡𝔢 e",
]


def stream(tokenizer: Tokenizer, prompt_ids: list[int], ids: list[int]) -> list[str]:
    detok = tokenizer.detokenizer(prompt_ids)
    deltas = [detok.push(i) for i in ids]
    deltas.append(detok.flush())
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_equals_full_decode(tokenizer: Tokenizer, text: str):
    prompt = tokenizer.encode("Say:")
    ids = tokenizer.encode(text)
    deltas = stream(tokenizer, prompt, ids)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


def test_multibyte_character_is_held_until_complete(tokenizer: Tokenizer):
    ids = tokenizer.encode("🚀")
    assert len(ids) > 1                                  # byte-level BPE splits the emoji
    detok = tokenizer.detokenizer(tokenizer.encode("x"))
    assert [detok.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.push(ids[-1]) == "🚀"


def test_unfinished_character_flushes_as_replacement(tokenizer: Tokenizer):
    ids = tokenizer.encode("a🚀")
    detok = tokenizer.detokenizer([])
    text = "".join(detok.push(i) for i in ids[:-1])
    assert text == "a"
    assert detok.flush() == tokenizer.decode(ids[:-1])[1:]
    assert detok.flush() == ""


def test_long_random_stream_matches_decode(tokenizer: Tokenizer):
    rng = random.Random(7)
    alphabet = "ab c😀é日\n🇫🇷"
    text = "".join(rng.choice(alphabet) for _ in range(400))
    ids = tokenizer.encode(text)
    assert "".join(stream(tokenizer, [], ids)) == text


def test_special_tokens_are_skipped(tokenizer: Tokenizer):
    im_end = tokenizer.token_to_id("<|im_end|>")
    ids = tokenizer.encode("hi") + [im_end]
    assert "".join(stream(tokenizer, [], ids)) == "hi"


def test_from_dir_collects_eos_ids(tokenizer: Tokenizer, tokenizer_dir, tmp_path):
    assert tokenizer.eos_token_ids == (tokenizer.token_to_id("<|im_end|>"),)
    assert tokenizer.vocab_size == 49152
    (tmp_path / "tokenizer.json").write_text((tokenizer_dir / "tokenizer.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert Tokenizer.from_dir(tmp_path).eos_token_ids == (7, 0, 2)


def test_from_dir_without_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_a_checkpoint_without_tokenizer_json_has_no_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert Tokenizer.from_dir_if_present(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_a_tokenizer_file_that_is_not_one_is_a_permanent_error_naming_it(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json: not a readable tokenizer") as info:
        Tokenizer.from_dir_if_present(tmp_path)
    assert isinstance(info.value, PermanentError)
