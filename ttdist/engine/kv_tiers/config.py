"""The KV tiers' settings and the sizes users type for them (``--kv-host-bytes 8GiB``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ttdist.engine.kv_tiers.node_tier import DEFAULT_ROOT

DEFAULT_HOST_FRACTION = 0.10   # ``--kv-host-bytes auto``: a tenth of the host's RAM per replica
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


class KvTierSizeError(ValueError):
    """A tier size that cannot be read or is larger than the host's RAM."""


def host_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_size(text: str | int, *, ram: int | None = None) -> int:
    """Bytes from ``1234``, ``512MiB``, ``8GB``, ``10%`` (of the host's RAM) or ``auto`` (10 %)."""
    if isinstance(text, int):
        return text
    value = str(text).strip().lower()
    ram = host_ram_bytes() if ram is None else ram
    if value == "auto":
        return int(ram * DEFAULT_HOST_FRACTION)
    if value.endswith("%"):
        try:
            return int(ram * float(value[:-1]) / 100)
        except ValueError:
            raise KvTierSizeError(f"cannot read the size {text!r}: a percentage is a number then %, e.g. 10%") from None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", value)
    if not m or m.group(2) not in _UNITS:
        raise KvTierSizeError(f"cannot read the size {text!r}: use bytes, e.g. 536870912, 512MiB, 8GB, 10% or auto")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@dataclass(frozen=True)
class KvTierConfig:
    """``host_bytes``: this replica's host tier (0: none); ``node_bytes``: the node tier in ``node_dir``
    that every replica on this host shares (0: none). ``restore_wait_s``: how long a prompt's first
    chunk waits for a restore still being read before recomputing instead. ``inline``: transfers
    run on the engine thread, one after the other (tests that count exactly)."""

    host_bytes: int = 0
    node_bytes: int = 0
    node_dir: str = DEFAULT_ROOT
    restore_wait_s: float = 0.2
    inline: bool = False

    @classmethod
    def from_sizes(cls, host: str | int, node: str | int = 0, node_dir: str = DEFAULT_ROOT) -> "KvTierConfig":
        """The tiers from sizes as users type them (``parse_size``), checked against this host's RAM."""
        config = cls(host_bytes=parse_size(host), node_bytes=parse_size(node), node_dir=node_dir)
        config.check()
        return config

    @property
    def enabled(self) -> bool:
        return self.host_bytes > 0 or self.node_bytes > 0

    def check(self, ram: int | None = None) -> None:
        """Raise ``KvTierSizeError`` (one line) for a size below 0 or above the host's RAM."""
        ram = host_ram_bytes() if ram is None else ram
        for name, size in (("host", self.host_bytes), ("node", self.node_bytes)):
            if size < 0:
                raise KvTierSizeError(f"the {name} KV tier's size must be >= 0 bytes, got {size}")
            if size > ram:
                raise KvTierSizeError(f"the {name} KV tier's {size:,} bytes are more than this host's RAM ({ram:,} bytes)")
        if self.restore_wait_s < 0:
            raise ValueError(f"KvTierConfig.restore_wait_s must be >= 0, got {self.restore_wait_s}")
