"""Checkpoint loading, the converted-weight cache, and clear errors for bad checkpoints."""

import json
import shutil

import numpy as np
import pytest

from ttdist.model.config import CheckpointError, LlamaConfig
from ttdist.model.runner import kv_budget
from ttdist.model.weights import convert_checkpoint, load_converted, read_checkpoint


def test_cache_is_keyed_and_reused(tiny_ckpt, tmp_path):
    first = convert_checkpoint(tiny_ckpt, mesh="1x8", dtype="bfloat16", cache_dir=tmp_path, progress=False)
    stamp = (first / "weights.npz").stat().st_mtime_ns
    again = convert_checkpoint(tiny_ckpt, mesh="1x8", dtype="bfloat16", cache_dir=tmp_path, progress=False)
    assert again == first and (again / "weights.npz").stat().st_mtime_ns == stamp
    other = convert_checkpoint(tiny_ckpt, mesh="8x4", dtype="bfloat16", cache_dir=tmp_path, progress=False)
    fp32 = convert_checkpoint(tiny_ckpt, mesh="1x8", dtype="float32", cache_dir=tmp_path, progress=False)
    assert len({first, other, fp32}) == 3
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["mesh"] == "1x8" and manifest["dtype"] == "bfloat16" and manifest["layout"] == "1d-1x8-a32-g1k1"
    loaded = load_converted(first)
    assert loaded.config == LlamaConfig.from_dir(tiny_ckpt)
    assert loaded.arrays["layers.0.wqkv"].shape == tuple(manifest["tensors"]["layers.0.wqkv"])


def test_conversion_shows_progress(tiny_ckpt, tmp_path, capsys):
    convert_checkpoint(tiny_ckpt, mesh="1x2", cache_dir=tmp_path, progress=True)
    assert "convert" in capsys.readouterr().err


def test_bf16_cache_rounds_like_bfloat16(tiny_ckpt, tmp_path):
    _, hf = read_checkpoint(tiny_ckpt)
    loaded = load_converted(convert_checkpoint(tiny_ckpt, mesh="1x1", dtype="bfloat16", cache_dir=tmp_path, progress=False))
    emb = loaded.arrays["embedding"][:, :64]
    ref = hf["model.embed_tokens.weight"]
    assert np.abs(emb - ref).max() <= np.abs(ref).max() * 2**-8
    assert (emb.view(np.uint32) & 0xFFFF == 0).all()


def corrupt_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors_names_the_file(tiny_ckpt, tmp_path):
    bad = corrupt_copy(tiny_ckpt, tmp_path / "bad")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*tensor '.*' is truncated"):
        read_checkpoint(bad)


def test_garbage_header(tiny_ckpt, tmp_path):
    bad = corrupt_copy(tiny_ckpt, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
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
        read_checkpoint(bad)


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


def test_nan_weights_are_refused(tiny_ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file

    bad = corrupt_copy(tiny_ckpt, tmp_path / "bad")
    tensors = load_file(bad / "model.safetensors")
    tensors["model.norm.weight"][3] = np.nan
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' contains NaN"):
        read_checkpoint(bad)


def test_kv_budget_from_chip_dram(tiny_ckpt):
    b1 = kv_budget(tiny_ckpt, mesh="n150", page_size=32)
    b8 = kv_budget(tiny_ckpt, mesh="t3k", page_size=32)
    assert b8.weight_bytes_per_chip < b1.weight_bytes_per_chip  # weights fracture over 8 chips
    dram = 12 * 2**30
    assert b1.num_pages == (dram - b1.weight_bytes_per_chip - b1.reserve_bytes_per_chip) // b1.page_bytes_per_chip
    # 2 layers x (K + V) x kv heads per chip x 32 tokens x 32 dims x 2 bytes
    assert b1.page_bytes_per_chip == 2 * 2 * 2 * 32 * 32 * 2
    with pytest.raises(MemoryError, match="no room for the KV cache"):
        kv_budget(tiny_ckpt, mesh="n150", reserve_fraction=1.0)
