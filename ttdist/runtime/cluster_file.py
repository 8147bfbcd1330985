"""Read a cluster spec file (``cluster/*.yaml``) into a checked ``ClusterConfig``.

Top-level keys are ``ClusterConfig`` fields (``model``, ``policy``, ``port``, ...), plus
``address`` (the Ray cluster to join) and ``replicas``: a list of groups with ``count``,
``mesh``, ``backend``, ``resources`` and optional ``devices`` (one device-id list per
replica) and ``emulate`` (``backend: ttnn`` on emulated chips), and ``autoscale`` (one group
whose count follows the load: ``AutoscaleConfig``). An unknown key is an error that names it.

Several models: ``models:`` lists them, each with ``name`` (what requests give in ``model``),
``model`` (its checkpoint), ``dtype``, ``policy``, ``chat_template``, ``autoscale`` (its own
pool follows its load; errors name ``models[i].autoscale.<field>``) and its own ``replicas``
groups; the top-level ``model``, ``dtype``, ``policy``, ``autoscale`` and ``replicas`` are then
not given (the cluster-wide settings such as ports, health and page size stay at the top).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import get_type_hints
from pathlib import Path

import yaml

from ttdist.runtime.api_config import ApiConfig, ApiConfigError, read_key_file
from ttdist.runtime.autoscale.config import AutoscaleConfig, AutoscaleConfigError
from ttdist.runtime.config import ClusterConfig, ClusterConfigError, HealthConfig, ModelConfig, ReplicaGroup
from ttdist.tracing.config import TracingConfig

_SCALARS = {
    f.name for f in fields(ClusterConfig)
} - {"groups", "scripted", "health", "api", "cluster_token", "models", "tracing", "autoscale"}
_MODEL_KEYS = ({f.name for f in fields(ModelConfig)} - {"groups"}) | {"replicas"}
_PER_MODEL = ("model", "dtype", "policy", "replicas", "autoscale")   # top-level keys that ``models:`` replaces
_GROUP_KEYS = {f.name for f in fields(ReplicaGroup)}
_HEALTH_KEYS = {f.name for f in fields(HealthConfig)}
_TRACING_KEYS = {f.name for f in fields(TracingConfig)}
_API_KEYS = {f.name for f in fields(ApiConfig)} | {"api_key_file"}
DEFAULT_HTTP_PORT = 8000     # as ``ttdist serve``


@dataclass(frozen=True)
class ClusterSpec:
    config: ClusterConfig
    address: str | None = None


def load_spec(path: str | Path) -> ClusterSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ClusterConfigError(f"{path}: cannot read the spec ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ClusterConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{path}: the spec must be a mapping of settings")
    return parse_spec(raw, str(path))


def parse_spec(raw: dict, where: str = "spec") -> ClusterSpec:
    raw = dict(raw)
    address = raw.pop("address", None)
    models = _models(raw.pop("models"), where, raw) if "models" in raw else ()
    groups_raw = raw.pop("replicas", [{}])
    health_raw = raw.pop("health", {}) or {}
    api = _api(raw.pop("api", {}) or {}, where)
    tracing_raw = _settings(raw.pop("tracing", {}) or {}, _TRACING_KEYS, where, "tracing", "tracing ")
    autoscale = _autoscale(raw.pop("autoscale", None), where)
    unknown = sorted(set(raw) - _SCALARS)
    if unknown:
        known = _SCALARS | {'address', 'replicas', 'health', 'api', 'models', 'tracing', 'autoscale'}
        raise ClusterConfigError(f"{where}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    groups = _groups(groups_raw, f"{where}: replicas")
    health_raw = _settings(health_raw, _HEALTH_KEYS, where, "health", "health ")
    if address is not None and not isinstance(address, str):
        raise ClusterConfigError(f"{where}: address must be a string (host:port or auto), got {address!r}")
    check_types(ClusterConfig, raw, where)
    check_types(HealthConfig, health_raw, where, "health.")
    check_types(TracingConfig, tracing_raw, where, "tracing.")
    config = ClusterConfig(groups=groups, health=HealthConfig(**health_raw), api=api, models=models,
                           tracing=TracingConfig(**tracing_raw), autoscale=autoscale, **raw)
    try:
        config.check()
    except ClusterConfigError as err:
        raise ClusterConfigError(f"{where}: {err}") from None
    return ClusterSpec(config, address)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_KINDS = {
    int: (_is_int, "an integer"),
    float: (_is_number, "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int | None: (lambda v: v is None or _is_int(v), "an integer or null"),
    float | None: (lambda v: v is None or _is_number(v), "a number or null"),
    str | None: (lambda v: v is None or isinstance(v, str), "a string or null"),
}


def check_types(cls, raw: dict, where: str, prefix: str = "") -> None:
    """Every plain-typed setting of ``raw`` has its field's type (YAML gives strings, lists, ...)."""
    hints = get_type_hints(cls)
    for name, value in raw.items():
        kind = _KINDS.get(hints.get(name))
        if kind is not None and not kind[0](value):
            raise ClusterConfigError(f"{where}: {prefix}{name} must be {kind[1]}, got {value!r}")


def _settings(raw, known: set[str], where: str, name: str, kind: str) -> dict:
    """A copy of ``raw``, checked to be a mapping of ``known`` settings (``name`` says what it is
    in the error; ``kind`` is the error's word for its settings, e.g. "api ")."""
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{where}: {name} must be a mapping of settings, got {raw!r}")
    bad = sorted(set(raw) - known)
    if bad:
        raise ClusterConfigError(f"{where}: unknown {kind}setting {bad[0]!r}; known: {', '.join(sorted(known))}")
    return dict(raw)


def _api(raw, where: str) -> ApiConfig:
    """The ``api:`` mapping; ``api_keys`` is a list, ``api_key_file`` adds the keys of a file."""
    raw = _settings(raw, _API_KEYS, where, "api", "api ")
    keys = raw.pop("api_keys", None) or []
    if isinstance(keys, str) or not isinstance(keys, list):
        raise ClusterConfigError(f"{where}: api.api_keys must be a list of keys")
    try:
        if raw.get("api_key_file"):
            keys = [*keys, *read_key_file(raw["api_key_file"])]
    except ApiConfigError as err:
        raise ClusterConfigError(f"{where}: api: {err}") from None
    raw.pop("api_key_file", None)
    raw.setdefault("http_port", DEFAULT_HTTP_PORT)
    if raw["http_port"] == -1:          # as on the command line: -1 = no HTTP
        raw["http_port"] = None
    return ApiConfig(api_keys=tuple(str(k) for k in keys), **raw)


def _groups(raw, where: str) -> tuple[ReplicaGroup, ...]:
    if not isinstance(raw, list) or not raw:
        raise ClusterConfigError(f"{where} must be a non-empty list of groups")
    return tuple(_group(g, f"{where}[{i}]") for i, g in enumerate(raw))


def _models(raw, where: str, top: dict) -> tuple[ModelConfig, ...]:
    """The ``models:`` list; with it the per-model settings may not also be given at the top."""
    both = [key for key in _PER_MODEL if key in top]
    if both:
        raise ClusterConfigError(f"{where}: {both[0]} is set per model under models:, not at the top level "
                                 f"(give either models: or the one-model form)")
    if not isinstance(raw, list) or not raw:
        raise ClusterConfigError(f"{where}: models must be a non-empty list of models")
    out = []
    for i, entry in enumerate(raw):
        at = f"models[{i}]"
        entry = _settings(entry, _MODEL_KEYS, where, at, f"{at} ")
        if not entry.get("name") or not isinstance(entry["name"], str):
            raise ClusterConfigError(f"{where}: {at}.name is required: the name requests give in their model field")
        groups = _groups(entry.pop("replicas", [{}]), f"{where}: {at}.replicas")
        autoscale = _autoscale(entry.pop("autoscale", None), where, f"{at}.autoscale")
        check_types(ModelConfig, entry, where, f"{at}.")
        out.append(ModelConfig(groups=groups, autoscale=autoscale, **entry))
    return tuple(out)


def _autoscale(raw, where: str, at: str = "autoscale") -> AutoscaleConfig | None:
    """The ``autoscale:`` mapping (``target: {<signal>: <value>}``) found at ``at``, or None without one."""
    if raw is None:
        return None
    try:
        return AutoscaleConfig.from_mapping(raw, at)
    except AutoscaleConfigError as err:
        raise ClusterConfigError(f"{where}: {err}") from None


def _group(raw, where: str) -> ReplicaGroup:
    raw = _settings(raw, _GROUP_KEYS, where, "a replica group", "")
    devices = raw.get("devices") or []
    if not isinstance(devices, list) or not all(
            isinstance(ids, list) and all(_is_int(d) for d in ids) for ids in devices):
        raise ClusterConfigError(f"{where}.devices must be a list of device-id lists (one per replica), got {devices!r}")
    raw["devices"] = tuple(tuple(ids) for ids in devices)
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict) or not all(_is_number(v) for v in resources.values()):
        raise ClusterConfigError(f"{where}.resources must map resource names to numbers, got {resources!r}")
    raw["resources"] = {str(k): float(v) for k, v in resources.items()}
    if "mesh" in raw:
        raw["mesh"] = str(raw["mesh"])
    spec, _, group = where.rpartition(": ")
    check_types(ReplicaGroup, raw, spec, f"{group}.")
    return ReplicaGroup(**raw)
