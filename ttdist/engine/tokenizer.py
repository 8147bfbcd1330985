"""Text <-> token ids with Hugging Face ``tokenizers``, and an incremental detokenizer.

``Tokenizer.from_dir`` reads a checkpoint folder's ``tokenizer.json`` and collects the EOS ids
from ``generation_config.json``, ``config.json`` and ``tokenizer_config.json``. A checkpoint
without ``tokenizer.json`` is served on token ids only (``from_dir_if_present`` gives None, as
vLLM's ``--skip-tokenizer-init``); one that is there but cannot be read raises
``TokenizerError``, a ``PermanentError`` (restarting the replica cannot fix the file).
``IncrementalDetokenizer`` turns a stream of ids into text deltas that never split a multi-byte
character: a delta is released only once the bytes decoded so far form whole characters.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers

from ttdist.errors import PermanentError

TOKENIZER_FILE = "tokenizer.json"
_REPLACEMENT = "\ufffd"
_PROMPT_CONTEXT = 5     # prompt ids kept as context so the first delta decodes as in the full text
_TRIM_AFTER = 64        # drop consumed ids from the window once this many have piled up


class TokenizerError(PermanentError, ValueError):
    """A checkpoint's tokenizer file that cannot be read; the message names the file."""


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, eos_token_ids: tuple[int, ...] = ()) -> None:
        self._tk = backend
        self.eos_token_ids = tuple(eos_token_ids)
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, checkpoint_dir: str | Path) -> "Tokenizer":
        folder = Path(checkpoint_dir)
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {folder}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot parse
            raise TokenizerError(f"{path}: not a readable tokenizer ({err})") from None
        return cls(backend, _eos_ids(folder, backend))

    @classmethod
    def from_dir_if_present(cls, checkpoint_dir: str | Path) -> "Tokenizer | None":
        """The checkpoint's tokenizer, or None when it has no ``tokenizer.json`` (token ids only)."""
        if not (Path(checkpoint_dir) / TOKENIZER_FILE).is_file():
            return None
        return cls.from_dir(checkpoint_dir)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tk.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tk.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def to_json(self) -> str:
        """The tokenizer as ``tokenizer.json`` text (for libraries that take it, e.g. llguidance)."""
        return self._tk.to_str()

    def detokenizer(self, prompt_ids: list[int]) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self, prompt_ids)


class IncrementalDetokenizer:
    """Feed ids one at a time with ``push``; each call returns the text that became final.

    Works on a sliding window of ids: ``prefix`` ids were already turned into text and give
    the decoder its context (leading spaces, merges); ids after ``read`` are new. A delta whose
    decoded window ends in U+FFFD is an unfinished multi-byte character and is held back.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-_PROMPT_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read])
        after = decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > _TRIM_AFTER:
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return after[len(before):]

    def flush(self) -> str:
        """The text of ids still held back (an unfinished character decodes as U+FFFD)."""
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read])
        after = decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return after[len(before):] if len(after) > len(before) else ""


def _eos_ids(folder: Path, backend: tokenizers.Tokenizer) -> tuple[int, ...]:
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        value = _read_json(folder / name).get("eos_token_id")
        ids.extend(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    token = _read_json(folder / "tokenizer_config.json").get("eos_token")
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str) and backend.token_to_id(token) is not None:
        ids.append(backend.token_to_id(token))
    return tuple(dict.fromkeys(ids))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise TokenizerError(f"{path}: {err}") from None
    return data if isinstance(data, dict) else {}
