"""KV pages read and written through the real ttnn API on the mock mesh (the KV tiers' transfers):
every op accepted and the shapes right, on one command queue and on two. Values, and the queues'
ordering, are checked on the emulator (tests/mesh)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ttnn._ttnn", reason="the ttnn lane runs in .venv-ttnn (scripts/test-ttnn)")

from ttdist.mesh.precision import DType  # noqa: E402
from ttdist.model import kv_pages  # noqa: E402
from ttdist.model.config import LlamaConfig  # noqa: E402
from ttdist.model.llama import CacheConfig, LlamaModel  # noqa: E402
from ttdist.model.weights import expected_shapes, prepare  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32)


def test_pages_read_and_written_on_ttnn(backend, spec):
    config = LlamaConfig(**TINY)
    rng = np.random.default_rng(0)
    hf = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in expected_shapes(config).items()}
    model = LlamaModel(backend, prepare(config, hf, spec, DType.bfloat8_b), CacheConfig(num_pages=8, page_size=32, dtype=DType.bfloat8_b))
    model.prefill_forward(list(range(1, 41)), 0, [3, 1])
    pages = kv_pages.read(backend, model, [3])
    heads = model.layout.n_kv_local * model.layout.n_inner
    assert pages[0].dtype == np.uint16 and pages[0].shape == (2, 2, heads, 32, 32)
    last = model.groups.pages - 1   # the last page of group 0: a user's pages lie in one group (Galaxy)
    kv_pages.write(backend, model, [last], pages)
    model.prefill_forward(list(range(5)), 32, [last, 5])


TWO_QUEUES = """
import sys
import numpy as np
import ttnn
from ttdist.mesh import make_backend, parse_mesh
from ttdist.mesh.placement import Replicate
from ttdist.mesh.precision import DType
from ttdist.mesh.ttnn.device import open_device
spec = parse_mesh(sys.argv[1])
# the mock's worker-row dispatch has no cores for a second queue: dispatch on ethernet cores
device = open_device(spec, dispatch_core="eth_row", command_queues=2)
backend = make_backend(spec, "ttnn", device=device, command_queues=2)
cache = backend.paged_cache(4, 2, 32, 32, (Replicate(), Replicate()), dtype=DType.bfloat8_b)
pages = backend.read_pages(cache, [1, 2])
backend.write_pages(cache, [3, 0], pages)
assert pages.shape == (2, 2, 32, 32), pages.shape
x = backend.from_host(np.ones((32, 32), np.float32), (Replicate(), Replicate()))
try:
    ttnn.add(backend._materialize_default(x), 1.0, queue_id=1)
except RuntimeError as exc:
    assert "Can't enqueue program from cq 1" in str(exc), exc
    print("program on cq 1 refused")
ttnn.synchronize_device(device)
backend.close()
ttnn.close_mesh_device(device)
print("two queues ok")
"""


def test_pages_on_a_second_command_queue(spec, system):
    """A mesh opened with two command queues; page readbacks and uploads on queue 1, programs on queue
    0, ordered by events (``record_event`` + ``event_synchronize`` on mock chips, where
    ``wait_for_event`` crashes). Its own process: the session's mesh has one queue."""
    import os
    import subprocess
    import sys

    if system == "tg":
        pytest.skip("one 1D system proves the calls; the Galaxy's ethernet dispatch is not mocked here")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root)
    done = subprocess.run([sys.executable, "-c", TWO_QUEUES, system], capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "program on cq 1 refused" in done.stdout and "two queues ok" in done.stdout
