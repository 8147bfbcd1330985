"""What the planner plans for, as data: named Llama configs, systems and precision presets.

Named configs carry the fields of each model's Hugging Face ``config.json`` that sizing needs
(Meta's Llama 3.1 / 3.2 releases and HuggingFaceTB/SmolLM2-135M-Instruct). A system is one
named mesh (``n150``, ``n300``, ``t3k``, ``tg``, or any ``RxC``) or ``N`` of them (``4xtg``):
each mesh holds one replica. Precision presets are the model's own (``ttdist.mesh.precision``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ttdist.mesh.precision import DType, Precision
from ttdist.mesh.spec import MeshSpec, MeshSpecError, Topology, parse_mesh
from ttdist.model.config import CheckpointError, LlamaConfig


class PlanError(ValueError):
    """Input the planner cannot plan for; ``field`` names the input that is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_LLAMA3 = dict(vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
               bos_token_id=128000, eos_token_id=[128001, 128008, 128009])

MODELS: dict[str, dict] = {
    "llama-3.2-1b": {**_LLAMA3, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                     "tie_word_embeddings": True},
    "llama-3.2-3b": {**_LLAMA3, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
                     "tie_word_embeddings": True},
    "llama-3.1-8b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128},
    # Llama-3.2-11B-Vision's text decoder as it runs on text alone: its 32 self-attention layers
    # (the 8 cross-attention layers are skipped without an image, as in transformers' Mllama)
    "llama-3.2-11b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                      "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128},
    "llama-3.1-70b": {**_LLAMA3, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                      "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128},
    "smollm2": {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "rms_norm_eps": 1e-5,
                "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": True,
                "bos_token_id": 1, "eos_token_id": 2},
}


def resolve_model(name_or_path: "str | LlamaConfig") -> tuple[str, LlamaConfig]:
    """A named config, an HF ``config.json`` (the file or its directory), or a ``LlamaConfig``."""
    if isinstance(name_or_path, LlamaConfig):
        return "config", name_or_path
    key = name_or_path.strip().lower()
    if key in MODELS:
        return key, LlamaConfig.from_dict(MODELS[key], key)
    path = Path(name_or_path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        names = ", ".join(MODELS)
        raise PlanError("model", f"unknown model {name_or_path!r}: use one of {names}, or a config.json")
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PlanError("model", f"{file}: unreadable config.json ({err})") from None
    if not isinstance(raw, dict):
        raise PlanError("model", f"{file}: config.json is not a JSON object")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in raw]
    if missing:
        raise PlanError("model", f"{file}: not a Llama config (missing {', '.join(missing)})")
    if raw.get("model_type", "llama") != "llama":
        raise PlanError("model", f"{file}: model_type {raw['model_type']!r} is not supported (only llama)")
    try:
        return str(file), LlamaConfig.from_dict(raw, str(file))
    except CheckpointError as err:
        raise PlanError("model", str(err)) from None


@dataclass(frozen=True)
class System:
    """``count`` meshes of the same kind; each one serves one replica."""

    name: str
    mesh: MeshSpec
    count: int = 1


_COUNT = re.compile(r"^\s*(\d+)\s*[xX*]\s*([a-zA-Z]\w*)\s*$")


def parse_system(text: "str | MeshSpec") -> System:
    """``n150``, ``n300``, ``t3k``, ``tg``, an ``RxC`` mesh, ``N`` systems such as ``4xtg``, or a ``MeshSpec``."""
    if isinstance(text, MeshSpec):
        return System(text.name, text)
    count, name = 1, text
    match = _COUNT.match(text)
    if match:
        count, name = int(match.group(1)), match.group(2)
        if count < 1:
            raise PlanError("system", f"{text!r}: the number of systems must be at least 1")
    try:
        mesh = parse_mesh(name)
    except MeshSpecError as err:
        raise PlanError("system", str(err)) from None
    if mesh.name == "tg":
        mesh = GALAXY_TORUS
    return System(text.strip().lower(), mesh, count)


# The Galaxy Tenstorrent publishes figures for is the 6U system, whose rows and columns close
# into rings: its demo runs every collective as a ring (llama3_70b_galaxy PERF.md: fabric_config
# FABRIC_1D_RING; README: "on a machine with torus, all ops will by default use ring topology").
GALAXY_TORUS = replace(parse_mesh("tg"), topology=(Topology.RING, Topology.RING))


# ---------------------------------------------------------------------- precision
def resolve_precision(text: "str | Precision", kv_cache: str | None = None) -> Precision:
    """A preset of ``ttdist.mesh.precision`` (``performance``, ``accuracy``) or one dtype for every
    matmul weight (``bfloat8_b``), as ``ttdist serve --dtype`` takes it; ``kv_cache`` overrides."""
    try:
        precision = Precision.parse(text if isinstance(text, Precision) else text.strip().lower())
    except ValueError as err:
        raise PlanError("precision", str(err)) from None
    if kv_cache is not None:
        try:
            precision = replace(precision, kv_cache=DType.parse(kv_cache.strip().lower()))
        except ValueError as err:
            raise PlanError("kv-dtype", str(err)) from None
    return precision
