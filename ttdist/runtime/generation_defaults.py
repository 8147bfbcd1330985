"""The served model's sampling defaults, from its ``generation_config.json``, as vLLM's
``--generation-config auto`` takes them: a request that leaves ``temperature``, ``top_k``,
``top_p`` or ``repetition_penalty`` out gets the checkpoint's value (``serve --generation-config
vllm`` ignores the file). The router fills them into the request before any replica sees it, so
a request moved to another replica keeps them.

Hugging Face's ``do_sample: false`` makes a checkpoint greedy whatever its temperature says, so
it reads as temperature 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ttdist.v1 import generation_pb2 as pb

MODES = ("auto", "vllm")
FIELDS = ("temperature", "top_k", "top_p", "repetition_penalty")


class GenerationConfigError(ValueError):
    """A generation_config.json whose sampling values are unusable (named)."""


@dataclass(frozen=True)
class GenerationDefaults:
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None

    def to_proto(self) -> pb.GenerationDefaults:
        return pb.GenerationDefaults(**{k: v for k in FIELDS if (v := getattr(self, k)) is not None})

    @classmethod
    def from_proto(cls, p: pb.GenerationDefaults) -> "GenerationDefaults":
        return cls(**{k: getattr(p, k) for k in FIELDS if p.HasField(k)})

    def as_dict(self) -> dict:
        """The defaults the checkpoint gives (fields it leaves out are absent)."""
        return {k: v for k in FIELDS if (v := getattr(self, k)) is not None}


def read_generation_defaults(model_dir: str | Path, mode: str = "auto") -> GenerationDefaults:
    """The defaults in ``model_dir/generation_config.json`` (none for mode ``vllm`` or no file)."""
    if mode not in MODES:
        raise GenerationConfigError(f"generation_config must be one of {', '.join(MODES)}, got {mode!r}")
    path = Path(model_dir) / "generation_config.json"
    if mode == "vllm" or not path.is_file():
        return GenerationDefaults()
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GenerationConfigError(f"{path}: cannot read it: {err}") from None
    values = {k: raw[k] for k in FIELDS if raw.get(k) is not None}
    if raw.get("do_sample") is False:
        values["temperature"] = 0.0
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise GenerationConfigError(f"{path}: {name} must be a number >= 0, got {value!r}")
    if "top_k" in values:
        values["top_k"] = int(values["top_k"])
    return GenerationDefaults(**values)


def apply_generation_defaults(sampling: pb.SamplingParams, defaults: GenerationDefaults) -> None:
    """Fill the fields ``sampling`` leaves unset with ``defaults`` (in place)."""
    for name in FIELDS:
        value = getattr(defaults, name)
        if value is not None and not sampling.HasField(name):
            setattr(sampling, name, value)
