"""How a replica gets its converted weights: the cache entry on its own node, or the entry's files
through the Ray object store.

A replica on the converting node opens the entry in place (``WeightSource(entry=...)``). One on
another node is handed ``RemoteShards``: the coordinator puts each file of the entry in bounded
chunks, and the replica fetches them one at a time into a node-local copy of the entry first,
then opens that copy like any other.

The weights loader is imported where it is used: a replica actor unpickles its ``WeightSource``
but its engine process opens it, and the loader's imports (``ml_dtypes``: ~0.8 s on a loaded
2-core host) held up every replica's ``start`` call before it ran.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ttdist.model.weights.sharded_load import ShardedWeights

TRANSFER_CHUNK = 256 << 20


@dataclass
class RemoteShards:
    """A cache entry for a replica on another node: the manifest and object refs of each file's
    chunks (at most ``TRANSFER_CHUNK`` bytes each).

    The refs sit inside this object, so Ray does not fetch them with the call; the replica gets
    one chunk at a time (``fetch``) into a node-local copy of the entry, and the coordinator
    reads one chunk at a time to put them.
    """

    name: str
    manifest: dict
    refs: dict[str, list] = field(default_factory=dict)

    @classmethod
    def put(cls, entry: str | Path) -> "RemoteShards":
        import ray

        from ttdist.model.weights import cache_format as cf

        entry = Path(entry)
        manifest = cf.read_manifest(entry)
        refs: dict[str, list] = {}
        for name in manifest["files"]:
            with open(entry / name, "rb") as fh:
                refs[name] = []
                while chunk := fh.read(TRANSFER_CHUNK):
                    refs[name].append(ray.put(chunk))
                    del chunk
        return cls(entry.name, manifest, refs)

    def fetch(self, root: str | Path | None = None) -> Path:
        import ray

        from ttdist.model.weights import cache_format as cf

        dest = Path(root or Path(tempfile.gettempdir()) / "ttdist-weights") / self.name
        if (dest / cf.MANIFEST).exists():
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, chunks in self.refs.items():
            with open(tmp / name, "wb") as fh:
                for ref in chunks:
                    fh.write(ray.get(ref))
        cf.write_manifest(tmp, self.manifest)
        cf.publish(tmp, dest)  # another replica on this node may have fetched it first
        return dest


@dataclass(frozen=True)
class WeightSource:
    """What a replica is handed to build its model: a cache entry on its node or shards to
    fetch through Ray, and the precision to upload them in."""

    entry: str | None = None
    remote: RemoteShards | None = None
    precision: str = ""

    def open(self) -> ShardedWeights:
        from ttdist.model.weights.sharded_load import load_converted

        entry = self.entry if self.remote is None else str(self.remote.fetch())
        return load_converted(entry, precision=self.precision or None)


def open_weights(weights) -> ShardedWeights:
    """``ShardedWeights`` from whatever a replica was handed (cache path, source, or weights)."""
    from ttdist.model.weights.sharded_load import load_converted

    if isinstance(weights, (str, Path)):
        return load_converted(weights)
    if isinstance(weights, WeightSource):
        return weights.open()
    return weights
