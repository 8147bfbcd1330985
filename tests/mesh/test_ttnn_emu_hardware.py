"""What the emulator keeps of the hardware: data formats, garbage in padding and unwritten
memory, freed tensors, refused arguments, unmodeled names, the program cache and shapes."""

from __future__ import annotations

import numpy as np
import pytest

from ttdist.mesh.precision import block_float_round
from ttdist.mesh.ttnn_emu import settings
from ttdist.mesh.ttnn_emu.testing import fresh_ttnn, open_mesh, per_chip, upload


@pytest.fixture
def ttnn():
    return fresh_ttnn()


@pytest.fixture
def nan_poison():
    before = settings.poison
    settings.poison = "nan"
    yield
    settings.poison = before


def test_uploads_round_to_the_chip_formats(ttnn):
    torch = pytest.importorskip("torch")
    dev = open_mesh(ttnn, 1, 1)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 1, 32, 64)) * np.exp(rng.uniform(-4, 4, (1, 1, 32, 1)))).astype(np.float32)
    got = per_chip(ttnn, upload(ttnn, dev, x, dtype=ttnn.bfloat16))[0, 0]
    np.testing.assert_array_equal(got, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    for dtype, bits in ((ttnn.bfloat8_b, 7), (ttnn.bfloat4_b, 3)):
        got = per_chip(ttnn, upload(ttnn, dev, x, dtype=dtype))[0, 0]
        np.testing.assert_array_equal(got, block_float_round(torch.from_numpy(x), bits).numpy())


def test_block_floats_need_tile_layout(ttnn):
    with pytest.raises(RuntimeError, match="TILE"):
        ttnn.Tensor(np.zeros((2, 32), np.float32), ttnn.bfloat8_b, None, ttnn.ROW_MAJOR_LAYOUT)


def test_bfloat16_does_not_read_back_to_numpy(ttnn):
    dev = open_mesh(ttnn, 1, 1)
    t = upload(ttnn, dev, np.ones((1, 1, 32, 32), np.float32), dtype=ttnn.bfloat16)
    with pytest.raises(TypeError, match="typecast to float32"):
        ttnn.get_device_tensors(t)[0].cpu().to_numpy()


def test_shapes_report_logical_and_tile_padded(ttnn):
    dev = open_mesh(ttnn, 1, 2)
    t = upload(ttnn, dev, np.ones((1, 1, 3, 40), np.float32), dtype=ttnn.bfloat16)
    assert list(t.shape) == [1, 1, 3, 40] and list(t.padded_shape) == [1, 1, 32, 64]
    assert str(t.shape) == "Shape([1, 1, 3, 40])" and t.layout == ttnn.TILE_LAYOUT
    heads = ttnn.experimental.nlp_concat_heads_decode(
        ttnn.experimental.nlp_create_qkv_heads_decode(upload(ttnn, dev, np.ones((1, 1, 3, 4 * 32), np.float32)), num_heads=2,
                                                      num_kv_heads=1)[0], num_heads=2)
    assert list(heads.shape) == [1, 1, 32, 64]  # the batch padded to a tile of users, as ttnn 0.81.1 reports it


def test_padding_an_op_wrote_is_garbage(ttnn, nan_poison):
    """Rows past the batch of nlp_concat_heads_decode, and tile padding seen through a matmul
    whose both operands come from ops, read as garbage (NaN here), never as zeros."""
    dev = open_mesh(ttnn, 1, 1)
    fused = upload(ttnn, dev, np.ones((1, 1, 3, 4 * 32), np.float32))
    q = ttnn.experimental.nlp_create_qkv_heads_decode(fused, num_heads=2, num_kv_heads=1)[0]
    rows = per_chip(ttnn, ttnn.experimental.nlp_concat_heads_decode(q, num_heads=2))[0, 0, 0, 0]
    assert np.isfinite(rows[:3]).all() and np.isnan(rows[3:]).all()
    a = ttnn.exp(upload(ttnn, dev, np.zeros((1, 1, 32, 40), np.float32)))      # K = 40: padding past column 40
    b = ttnn.exp(upload(ttnn, dev, np.zeros((1, 1, 40, 32), np.float32)))      # ... and past row 40
    assert np.isnan(per_chip(ttnn, ttnn.matmul(a, b))).all()
    host_b = upload(ttnn, dev, np.ones((1, 1, 40, 32), np.float32))             # host uploads pad with zeros
    assert np.isnan(per_chip(ttnn, ttnn.matmul(a, host_b))).all()              # NaN x 0 is still NaN


def test_finite_garbage_times_zero_padding_is_harmless_as_on_chips(ttnn):
    dev = open_mesh(ttnn, 1, 1)
    a = ttnn.exp(upload(ttnn, dev, np.zeros((1, 1, 32, 40), np.float32)))
    host_b = upload(ttnn, dev, np.ones((1, 1, 40, 32), np.float32))
    np.testing.assert_array_equal(per_chip(ttnn, ttnn.matmul(a, host_b))[0, 0], np.full((1, 1, 32, 32), 40.0))


def test_a_deallocated_tensor_cannot_be_used(ttnn):
    dev = open_mesh(ttnn, 1, 2)
    t = upload(ttnn, dev, np.ones((1, 1, 32, 32), np.float32))
    ttnn.deallocate(t)
    assert not t.is_allocated()
    with pytest.raises(ttnn.TensorDeallocated):
        ttnn.add(t, 1.0)
    with pytest.raises(ttnn.TensorDeallocated):
        t.cpu()


def test_unmodeled_names_and_arguments_are_errors_naming_them(ttnn):
    with pytest.raises(NotImplementedError, match=r"ttnn\.softmax"):
        ttnn.softmax
    with pytest.raises(AttributeError, match=r"ttnn\.experimental\.rotary_embedding_llama"):
        ttnn.experimental.rotary_embedding_llama
    assert not hasattr(ttnn.transformer, "flash_mla_prefill")
    dev = open_mesh(ttnn, 1, 1)
    t = upload(ttnn, dev, np.ones((1, 1, 32, 32), np.float32))
    with pytest.raises(NotImplementedError, match="activations"):
        ttnn.add(t, t, activations=[ttnn.UnaryOpType.SILU])
    with pytest.raises(RuntimeError, match="command queue 1 does not exist"):   # modeled: test_ttnn_emu_queues.py
        ttnn.add(t, t, queue_id=1)
    with pytest.raises(NotImplementedError, match="UnaryOpType.GELU"):
        ttnn.mul(t, t, input_tensor_a_activations=[ttnn.UnaryOpType.GELU])


def test_program_cache_counts_each_distinct_program_once(ttnn):
    dev = open_mesh(ttnn, 1, 2)
    x = upload(ttnn, dev, np.ones((1, 1, 32, 64), np.float32))
    ttnn.add(x, x)
    before = dev.num_program_cache_entries()
    ttnn.add(x, x)
    assert dev.num_program_cache_entries() == before
    ttnn.add(upload(ttnn, dev, np.ones((1, 1, 64, 64), np.float32)), 2.0)
    assert dev.num_program_cache_entries() == before + 1


def test_the_system_follows_the_mesh_shape(ttnn):
    assert open_mesh(ttnn, 8, 4).system == "tg" and open_mesh(ttnn, 1, 8).system == "t3k"
    dev = ttnn.open_mesh_device(ttnn.MeshShape(1, 2), dispatch_core_config=ttnn.DispatchCoreConfig(
        ttnn.DispatchCoreType.WORKER, ttnn.DispatchCoreAxis.ROW))
    assert (dev.system, dev.compute_with_storage_grid_size()) == ("n300", ttnn.CoreCoord(8, 7))
    with pytest.raises(RuntimeError, match="needs 64 chips"):
        ttnn.open_mesh_device(ttnn.MeshShape(8, 8))


def test_the_emulator_and_the_backend_on_it_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; from ttdist.mesh import ttnn_emu; ttnn_emu.install(); import ttdist.mesh.ttnn.backend; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
