"""Streaming checkpoint conversion, the per-device weight cache, and clear errors for bad checkpoints."""

import json
import os
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ttdist.mesh.spec import parse_mesh
from ttdist.model.config import CheckpointError, LlamaConfig
from ttdist.model.runner import kv_budget
from ttdist.model.weights import convert as streaming_convert
from ttdist.model.weights import convert_checkpoint, expected_shapes, load_converted, open_checkpoint, prepare

BF16 = ml_dtypes.bfloat16


def read_checkpoint(path):
    """Config and every HF-named tensor as float32, every tensor checked (what conversion reads)."""
    ckpt = open_checkpoint(path)
    return ckpt.config, {name: ckpt.read(name, dtype=np.float32) for name in expected_shapes(ckpt.config)}


def convert(path, cache, mesh="1x8", dtype="bfloat16", **kw):
    return convert_checkpoint(path, mesh=mesh, dtype=dtype, cache_dir=cache, progress=False, **kw)


def rewrite(src, dst, dtype=None, files=1):
    """A copy of checkpoint ``src`` with its tensors in ``dtype``, split over ``files`` files + an index."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    if dtype is not None:
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    if files == 1:
        save_file(tensors, dst / "model.safetensors")
        return dst
    (dst / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i in range(files):
        file = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::files]}
        save_file(part, dst / file)
        weight_map.update({n: file for n in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def all_arrays(weights):
    return {name: weights.arrays[name] for name in weights.arrays}


def test_cache_is_keyed_and_reused(tiny_ckpt, tmp_path):
    first = convert(tiny_ckpt, tmp_path)
    stamps = {f.name: f.stat().st_mtime_ns for f in first.iterdir()}
    again = convert(tiny_ckpt, tmp_path)
    assert again == first and {f.name: f.stat().st_mtime_ns for f in again.iterdir()} == stamps
    other = convert(tiny_ckpt, tmp_path, mesh="8x4")
    fp32 = convert(tiny_ckpt, tmp_path, dtype="float32")
    bfp8 = convert(tiny_ckpt, tmp_path, dtype="bfloat8_b")
    assert len({first, other, fp32}) == 3 and bfp8 == first  # block floats are packed from the bf16 entry
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["mesh"] == "1x8" and manifest["storage"] == "bfloat16" and manifest["layout"] == "1d-1x8-a32-g1k1"
    assert sorted(manifest["files"]) == ["layer-0000.safetensors", "layer-0001.safetensors", "top.safetensors"]
    loaded = load_converted(first)
    assert loaded.config == LlamaConfig.from_dir(tiny_ckpt)
    # every chip's piece is stored: wqkv is column-parallel over 8 chips
    assert loaded.arrays["layers.0.wqkv"].shape == (1, 8, 256, 96) == tuple(manifest["tensors"]["layers.0.wqkv"]["shape"])


def test_conversion_shows_progress(tiny_ckpt, tmp_path, capsys):
    convert_checkpoint(tiny_ckpt, mesh="1x2", cache_dir=tmp_path, progress=True)
    assert "convert" in capsys.readouterr().err


@pytest.mark.parametrize("mesh", ["1x1", "1x8", "8x4"])
def test_streamed_entry_equals_in_memory_pieces(tiny_ckpt, tmp_path, mesh, monkeypatch):
    """Embedding and LM head are written in many small row slabs; every piece equals the
    in-memory conversion of the same checkpoint."""
    monkeypatch.setattr(streaming_convert, "SLAB_BYTES", 4096)
    config, hf = read_checkpoint(tiny_ckpt)
    loaded = all_arrays(load_converted(convert(tiny_ckpt, tmp_path, mesh=mesh, dtype="float32")))
    want = all_arrays(prepare(config, hf, parse_mesh(mesh), "float32"))
    assert loaded.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(loaded[name], want[name], err_msg=name)


@pytest.mark.parametrize("source", [np.float32, np.float16, BF16])
def test_bf16_fp16_fp32_checkpoints_round_to_bf16_once(tiny_ckpt, tmp_path, source):
    ckpt = rewrite(tiny_ckpt, tmp_path / "ckpt", dtype=source)
    config, hf = read_checkpoint(ckpt)
    loaded = all_arrays(load_converted(convert(ckpt, tmp_path / "cache", mesh="1x2")))
    bf16_hf = {k: v.astype(BF16).astype(np.float32) for k, v in hf.items()}
    want = all_arrays(prepare(config, bf16_hf, parse_mesh("1x2"), "bfloat16"))
    for name in want:
        np.testing.assert_array_equal(loaded[name], want[name], err_msg=name)
    assert (loaded["embedding"].view(np.uint32) & 0xFFFF == 0).all()


def test_index_sharded_checkpoint_equals_single_file(tiny_ckpt, tmp_path):
    sharded = rewrite(tiny_ckpt, tmp_path / "sharded", dtype=BF16, files=3)
    single = rewrite(tiny_ckpt, tmp_path / "single", dtype=BF16)
    a = all_arrays(load_converted(convert(sharded, tmp_path / "c1", mesh="8x4")))
    b = all_arrays(load_converted(convert(single, tmp_path / "c2", mesh="8x4")))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    victim = sorted(index["weight_map"].items())[0]
    part = load_file(sharded / victim[1])
    del part[victim[0]]
    save_file(part, sharded / victim[1])
    with pytest.raises(CheckpointError, match=rf"{victim[1]}: tensor '{victim[0]}' is missing"):
        read_checkpoint(sharded)
    (sharded / victim[1]).unlink()
    with pytest.raises(CheckpointError, match=rf"index.json: names '{victim[1]}', which is not in the checkpoint"):
        read_checkpoint(sharded)


def test_changed_checkpoint_gets_a_new_entry(tiny_ckpt, tmp_path):
    ckpt = rewrite(tiny_ckpt, tmp_path / "ckpt")
    file = ckpt / "model.safetensors"
    first = convert(ckpt, tmp_path / "cache")
    st = file.stat()
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    touched = convert(ckpt, tmp_path / "cache")
    assert touched != first
    tensors = load_file(file)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 2
    save_file(tensors, file)
    assert convert(ckpt, tmp_path / "cache") not in (first, touched)


def test_verify_hash_catches_what_the_cheap_key_cannot(tiny_ckpt, tmp_path):
    ckpt = rewrite(tiny_ckpt, tmp_path / "ckpt")
    file = ckpt / "model.safetensors"
    entry = convert(ckpt, tmp_path / "cache", verify_hash=True)
    recorded = json.loads((entry / "manifest.json").read_text())["content_hash"]
    assert recorded
    st = file.stat()
    raw = bytearray(file.read_bytes())
    raw[-1] ^= 0x01  # same size, same header, same mtime: only the bytes differ
    file.write_bytes(bytes(raw))
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert convert(ckpt, tmp_path / "cache") == entry  # the cheap key cannot tell
    again = convert(ckpt, tmp_path / "cache", verify_hash=True)
    assert json.loads((again / "manifest.json").read_text())["content_hash"] != recorded


def test_damaged_cache_entry_is_a_clear_error(tiny_ckpt, tmp_path):
    entry = convert(tiny_ckpt, tmp_path)
    layer = entry / "layer-0001.safetensors"
    layer.write_bytes(layer.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"layer-0001\.safetensors: converted shard is missing or has the wrong size"):
        load_converted(entry)


def corrupt_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors_names_the_file_and_tensor(tiny_ckpt, tmp_path):
    bad = corrupt_copy(tiny_ckpt, tmp_path / "bad")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor '.*' is truncated"):
        convert(bad, tmp_path / "cache")
    f.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated \(no header\)"):
        read_checkpoint(bad)


def test_garbage_header(tiny_ckpt, tmp_path):
    bad = corrupt_copy(tiny_ckpt, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        read_checkpoint(bad)
    (bad / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        read_checkpoint(bad)


def test_config_that_does_not_match_the_tensors(tiny_ckpt, tmp_path):
    bad = corrupt_copy(tiny_ckpt, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \(128, 64\), config\.json says \(256, 64\)"):
        read_checkpoint(bad)
    cfg["intermediate_size"], cfg["num_hidden_layers"] = 128, 3
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.2\..*' is missing"):
        convert(bad, tmp_path / "cache")


def test_bad_config_files(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        LlamaConfig.from_dir(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        LlamaConfig.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type 'gpt2' is not supported"):
        LlamaConfig.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="not a Llama config"):
        LlamaConfig.from_dir(tmp_path)


@pytest.mark.parametrize("dtype", [np.float32, BF16])
def test_nan_weights_are_refused(tiny_ckpt, tmp_path, dtype):
    bad = rewrite(tiny_ckpt, tmp_path / "bad", dtype=dtype)
    tensors = load_file(bad / "model.safetensors")
    tensors["model.norm.weight"][3] = np.nan
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' contains NaN"):
        convert(bad, tmp_path / "cache")


def test_unsupported_dtype_is_named(tiny_ckpt, tmp_path):
    bad = rewrite(tiny_ckpt, tmp_path / "bad")
    tensors = load_file(bad / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.int32)
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' has unsupported dtype I32"):
        read_checkpoint(bad)


def test_conversion_and_loading_need_no_torch(tiny_ckpt, tmp_path):
    """The weight path runs where torch is absent (the ttnn lane's Python 3.12 environment)."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from ttdist.model.weights import convert_checkpoint, load_converted\n"
        f"e = convert_checkpoint({str(tiny_ckpt)!r}, mesh='8x4', cache_dir={str(tmp_path)!r}, progress=False)\n"
        "w = load_converted(e)\n"
        "print(sum(w.arrays[n].size for n in w.arrays))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 0


def test_kv_budget_estimate_from_chip_dram(tiny_ckpt):
    b1 = kv_budget(tiny_ckpt, mesh="n150", page_size=32)
    b8 = kv_budget(tiny_ckpt, mesh="t3k", page_size=32)
    assert b8.weight_bytes_per_chip < b1.weight_bytes_per_chip  # weights fracture over 8 chips
    dram = 12 * 2**30
    assert b1.num_pages == (dram - b1.weight_bytes_per_chip - b1.reserve_bytes_per_chip) // b1.page_bytes_per_chip
    # 2 layers x (K + V) x kv heads per chip x 32 tokens x 32 dims x 2 bytes
    assert b1.page_bytes_per_chip == 2 * 2 * 2 * 32 * 32 * 2
    with pytest.raises(MemoryError, match="no room for the KV cache"):
        kv_budget(tiny_ckpt, mesh="n150", reserve_fraction=1.0)
