"""The node tier under faults, with real processes: a writer SIGKILLed in the middle of writing an
entry leaves no entry a reader can see (only a stray temporary file, removed once stale), and a
write the filesystem refuses (the tier's memory full) keeps nothing and fails nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ttdist.engine.kv_tiers import KvBlock, NodeTier
from ttdist.engine.kv_tiers.node_tier import STALE_TMP_S, identity_folder

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = "model-x"
WORDS = 4 << 20                     # 32 MiB per entry: a write takes long enough to be caught in the middle
KEEP_BYTES = 4 * (WORDS * 8 + 4096)  # the writer's tier holds four entries (older ones are evicted)
ATTEMPTS = 5

WRITER = """
import sys
import numpy as np
from ttdist.engine.kv_tiers import KvBlock, NodeTier
tier = NodeTier(sys.argv[1], sys.argv[2], int(sys.argv[4]))
base = np.arange(int(sys.argv[3]), dtype=np.int64)
for i in range(1, 31):
    tier.put(KvBlock.of(i, [i] * 4, base + i))
"""


def tokens(h: int) -> list[int]:
    return [h] * 4


def python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, **kw)


def partial_tmps(folder: Path) -> list[Path]:
    """Temporary files shorter than an entry's payload: written in part."""
    out = []
    try:
        for e in os.scandir(folder):
            try:
                if e.name.endswith(".tmp") and e.stat().st_size < WORDS * 8:
                    out.append(Path(e.path))
            except FileNotFoundError:
                continue
    except FileNotFoundError:
        pass
    return out


def published(folder: Path) -> int:
    try:
        return sum(name.endswith(".kvb") for name in os.listdir(folder))
    except FileNotFoundError:
        return 0


def kill_mid_write(root: Path) -> list[Path]:
    """Start a writer of 30 entries, SIGKILL it the moment an entry is half written (two or more
    published before); the partial files it left (none when it finished unkilled)."""
    folder = root / identity_folder(IDENTITY)
    proc = python(WRITER, str(root), IDENTITY, str(WORDS), str(KEEP_BYTES))
    try:
        while proc.poll() is None:
            if published(folder) >= 2 and [p for p in partial_tmps(folder) if p.stat().st_size > 0]:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.0005)
    except FileNotFoundError:   # the temporary file was renamed while looked at: look again
        return kill_mid_write(root) if proc.poll() is None else []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return partial_tmps(folder) if proc.returncode == -signal.SIGKILL else []


def test_a_writer_killed_mid_entry_leaves_no_partial_entry_for_any_reader(tmp_path):
    left: list[Path] = []
    for attempt in range(ATTEMPTS):   # the kill lands after the write now and then: try again
        root = tmp_path / f"kv{attempt}"
        left = kill_mid_write(root)
        if left:
            break
    assert left, f"no writer was killed in the middle of an entry in {ATTEMPTS} tries"
    reader = NodeTier(root, IDENTITY, 1 << 40)
    killed = [int(p.name.split(".")[1], 16) for p in left]
    for h in killed:                                      # the entry it was writing is not there
        assert not reader.contains(h) and reader.get(h, tokens(h)) is None and h not in reader.hashes()
    published = reader.hashes()
    assert published, "the writer published nothing before it was killed"
    base = np.arange(WORDS, dtype=np.int64)
    for h in published:                                   # every entry there is whole and sound
        block = reader.get(h, tokens(h))
        assert block is not None and block.intact() and np.array_equal(block.payload, base + h), h
    stats = reader.stats()
    assert (stats.pages, stats.rejected) == (len(published), 0)
    assert stats.bytes == sum(reader.path(h).stat().st_size for h in published)   # the partial file is not counted
    again = KvBlock.of(killed[0], tokens(killed[0]), base + killed[0])
    assert reader.put(again) and reader.get(killed[0], tokens(killed[0])).checksum == again.checksum
    old = time.time() - STALE_TMP_S - 1
    for p in left:
        os.utime(p, (old, old))
    reader.stats()                                        # a writer's scan removes stale temporary files
    assert not any(p.exists() for p in left)


FULL_FOLDER = """
import resource, signal, sys
import numpy as np
from ttdist.engine.kv_tiers import KvBlock, NodeTier
tier = NodeTier(sys.argv[1], "model-x", 1 << 30)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))   # no file past 1 MiB: writes fail as on a full /dev/shm
big = tier.put(KvBlock.of(1, [1] * 4, np.arange(1 << 18, dtype=np.int64)))   # 2 MiB
small = tier.put(KvBlock.of(2, [2] * 4, np.arange(1 << 10, dtype=np.int64)))
print(big, small, sorted(p.name for p in tier.folder.iterdir()))
"""


def test_a_write_the_filesystem_refuses_keeps_nothing_and_raises_nothing(tmp_path):
    proc = python(FULL_FOLDER, str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["False", "True", "['0000000000000002.kvb']"]
    reader = NodeTier(tmp_path, "model-x", 1 << 30)
    assert reader.get(1, [1] * 4) is None and reader.get(2, [2] * 4).intact()
