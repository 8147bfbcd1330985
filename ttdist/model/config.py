"""The Llama hyper-parameters ttdist needs, read from a Hugging Face ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ttdist.errors import PermanentError


class CheckpointError(PermanentError, ValueError):
    """A checkpoint that is missing, corrupt, or does not match its config."""


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "LlamaConfig":
        try:
            heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            eos = raw.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            rope = raw.get("rope_scaling") or raw.get("rope_parameters")
            theta = raw.get("rope_theta") or (rope or {}).get("rope_theta") or 10000.0
            if rope and rope.get("rope_type", rope.get("type", "default")) == "default":
                rope = None
            cfg = cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
                rope_theta=float(theta),
                rope_scaling=dict(rope) if rope else None,
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                bos_token_id=raw.get("bos_token_id"),
                eos_token_ids=eos_ids,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: not a Llama config ({err!r})") from None
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise CheckpointError(f"{source}: {cfg.num_attention_heads} heads do not group over {cfg.num_key_value_heads} KV heads")
        return cfg

    @classmethod
    def from_dir(cls, path: str | Path) -> "LlamaConfig":
        file = Path(path) / "config.json"
        try:
            raw = json.loads(file.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{file}: no config.json in the checkpoint directory") from None
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{file}: invalid JSON ({err})") from None
        arch = raw.get("model_type", "llama")
        if arch != "llama":
            raise CheckpointError(f"{file}: model_type {arch!r} is not supported (only llama)")
        return cls.from_dict(raw, str(file))
