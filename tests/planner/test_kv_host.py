"""The planner's host KV tier: its page size is what the runner really hands the tier."""

from __future__ import annotations

import pytest

from ttdist.mesh import parse_mesh
from ttdist.mesh.precision import DType
from ttdist.model.config import LlamaConfig
from ttdist.model.layout import Layout
from ttdist.planner.kv_host import host_tier


@pytest.mark.parametrize("mesh,kv_dtype", [("1x2", "bfloat16"), ("2x2", "float32")])
def test_page_bytes_equal_a_real_page_read_off_the_mesh(tiny_checkpoint, mesh, kv_dtype):
    from ttdist.model.runner import MeshModelRunner

    runner = MeshModelRunner.from_checkpoint(tiny_checkpoint, mesh=mesh, backend="sim", dtype="float32", page_size=32,
                                             num_pages=4, max_batch=2, kv_dtype=kv_dtype)
    runner.prefill_logits(list(range(3, 40)), 0, [0, 1])
    page = runner.read_kv_pages([0])[0]
    layout = Layout(LlamaConfig.from_dir(tiny_checkpoint), parse_mesh(mesh))
    plan = host_tier(layout, DType.parse(kv_dtype), context=100, page_size=32, host_bytes=10 * page.nbytes * 4)
    assert plan.page_bytes == page.nbytes
    assert (plan.user_bytes, plan.users) == (4 * page.nbytes, 10)
