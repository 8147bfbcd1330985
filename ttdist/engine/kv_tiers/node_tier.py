"""The node tier: KV pages shared by every replica on one host, one file per page.

A folder (``/dev/shm/ttdist-kv`` by default: memory, not disk) holds one subfolder per KV
identity (model weights, layout, KV dtype, page size), so replicas of another model or layout
never see each other's pages. A page is the file ``<block hash>.kvb``: a magic, a JSON header
(identity, block hash, token ids, dtype, shape, checksum) and the payload bytes.

Entries are published only when complete: a writer writes a temporary file in the same folder
and renames it into place (atomic on POSIX), so a replica killed mid-offload leaves at most a
stray temporary file (removed by the next writer once old), never a half entry; a write that
fails (the folder's memory or disk is full) removes its temporary file and keeps nothing. A reader checks
the identity, the hash, the token ids and the checksum; any mismatch is a miss and a file that
is not sound is removed. Capacity is in bytes over the whole folder: a writer makes room by
removing the least recently used files (a read touches a file's mtime).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import xxhash

from ttdist.engine.kv_tiers.block import KvBlock
from ttdist.engine.kv_tiers.stats import TierCounters

MAGIC = b"TTDKV001"
SUFFIX = ".kvb"
DEFAULT_ROOT = "/dev/shm/ttdist-kv"
STALE_TMP_S = 600.0


def identity_folder(identity: str) -> str:
    return f"{xxhash.xxh3_64_hexdigest(identity.encode())}"


class NodeTier:
    def __init__(self, root: str | Path, identity: str, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"a node tier's capacity must be >= 0 bytes, got {capacity_bytes}")
        self.identity = identity
        self.capacity_bytes = capacity_bytes
        self.folder = Path(root) / identity_folder(identity)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.counters = TierCounters(capacity_bytes=capacity_bytes)
        self._lock = threading.Lock()

    def path(self, block_hash: int) -> Path:
        return self.folder / f"{block_hash:016x}{SUFFIX}"

    def contains(self, block_hash: int) -> bool:
        return self.path(block_hash).is_file()

    def hashes(self) -> list[int]:
        """The block hashes of every published entry (from the file names: nothing is read)."""
        out = []
        for name in os.listdir(self.folder):
            if name.endswith(SUFFIX):
                try:
                    out.append(int(name[:-len(SUFFIX)], 16))
                except ValueError:
                    continue
        return out

    def put(self, block: KvBlock) -> bool:
        """Publish ``block`` (a no-op when a replica already did); False when it cannot fit."""
        target = self.path(block.block_hash)
        if target.is_file():
            return True
        data = _encode(self.identity, block)
        if len(data) > self.capacity_bytes:
            return False
        with self._lock:
            self._make_room(len(data))
            tmp = self.folder / f".{block.block_hash:016x}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            except OSError:   # the folder's memory (or disk) is full: not kept, and no half file left behind
                _unlink(tmp)
                return False
            self.counters.bytes_in += len(data)
            self._refresh()
        return True

    def get(self, block_hash: int, token_ids) -> KvBlock | None:
        """The sound entry for these tokens, or None (an unsound file is removed and counted)."""
        path = self.path(block_hash)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        block = _decode(data, self.identity)
        if block is None or block.block_hash != block_hash or not block.intact():
            self.counters.rejected += 1
            _unlink(path)
            return None
        if not block.holds(block_hash, token_ids):
            return None   # a hash collision: the entry is sound, just not these tokens
        try:
            os.utime(path)
        except FileNotFoundError:
            pass
        self.counters.bytes_out += len(data)
        return block

    def stats(self) -> TierCounters:
        with self._lock:
            self._refresh()
            return TierCounters(**vars(self.counters))

    def _entries(self) -> list[tuple[int, int, Path]]:
        """(mtime, size, path) of every published entry; stale temporary files are removed."""
        out = []
        now = time.time()
        for e in os.scandir(self.folder):
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            if e.name.endswith(SUFFIX):
                out.append((st.st_mtime_ns, st.st_size, Path(e.path)))
            elif e.name.endswith(".tmp") and now - st.st_mtime > STALE_TMP_S:
                _unlink(Path(e.path))
        return out

    def _make_room(self, nbytes: int) -> None:
        entries = sorted(self._entries())
        held = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if held + nbytes <= self.capacity_bytes:
                break
            _unlink(path)
            held -= size
            self.counters.evictions += 1

    def _refresh(self) -> None:
        entries = self._entries()
        self.counters.pages, self.counters.bytes = len(entries), sum(size for _, size, _ in entries)


def _encode(identity: str, block: KvBlock) -> bytes:
    header = json.dumps({
        "identity": identity, "block_hash": block.block_hash, "token_ids": list(block.token_ids),
        "dtype": block.payload.dtype.str, "shape": list(block.payload.shape), "checksum": block.checksum,
    }).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + block.payload.tobytes()


def _decode(data: bytes, identity: str) -> KvBlock | None:
    try:
        if data[:len(MAGIC)] != MAGIC:
            return None
        (size,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        header = json.loads(data[start:start + size])
        if header["identity"] != identity:
            return None
        dtype, shape = np.dtype(header["dtype"]), tuple(header["shape"])
        body = data[start + size:]
        if len(body) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            return None
        payload = np.frombuffer(body, dtype=dtype).reshape(shape)
        return KvBlock(int(header["block_hash"]), tuple(int(t) for t in header["token_ids"]), payload, int(header["checksum"]))
    except (ValueError, KeyError, TypeError, struct.error):
        return None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
