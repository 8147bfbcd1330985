"""The sharding table: padding, head assignment and placements, asked of the layout."""

import numpy as np
import pytest

from ttdist.mesh import Replicate, Shard, parse_mesh
from ttdist.model.config import LlamaConfig
from ttdist.model.layout import Layout
from ttdist.model.rope import RopeTable

SMOLLM2 = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=1e5, tie_word_embeddings=True)
LLAMA70B = LlamaConfig(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, head_dim=128)


def test_smollm2_on_t3k_pads_each_kv_group_so_no_chip_mixes_groups():
    lay = Layout(SMOLLM2, parse_mesh("t3k"))
    assert lay.one_d and lay.inner_axis == lay.hidden_axis == 1
    assert lay.q_heads == [[0, 1], [2, -1], [3, 4], [5, -1], [6, 7], [8, -1], [-1, -1], [-1, -1]]
    assert lay.kv_heads == [[0], [0], [1], [1], [2], [2], [0], [0]]  # kv0 is duplicated on chips 0 and 1
    assert lay.group == 2 and lay.n_q_local == 2 and lay.n_kv_local == 1
    assert lay.hidden == 768 and lay.hidden_local == 96  # 576 padded to whole tiles per chip
    assert lay.up_weight() == (Replicate(), Shard(1)) and lay.down_weight() == (Replicate(), Shard(0))


def test_smollm2_on_n300_keeps_whole_groups_per_chip():
    lay = Layout(SMOLLM2, parse_mesh("n300"))
    assert lay.q_heads == [[0, 1, 2, 3, 4, 5], [6, 7, 8, -1, -1, -1]]
    assert lay.kv_heads == [[0, 1], [2, 0]]
    assert lay.group == 3 and lay.n_kv_local == 2


def test_llama70b_on_galaxy_is_2d_with_one_kv_head_per_row():
    lay = Layout(LLAMA70B, parse_mesh("tg"))
    assert not lay.one_d and lay.inner_axis == 0 and lay.hidden_axis == 1
    assert lay.n_q_local == 8 and lay.n_kv_local == 1 and lay.group == 8
    assert lay.hidden_local == 2048 and lay.ff_local == 3584 and lay.vocab_local == 16032
    assert lay.up_weight() == (Shard(1), Shard(0)) and lay.down_weight() == (Shard(0), Shard(1))
    assert lay.residual == (Replicate(), Shard(1)) and lay.heads == (Shard(1), Replicate())


def test_llama3_rope_scaling_matches_transformers():
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    hf_cfg = HFConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0, rope_scaling=scaling, max_position_embeddings=131072)
    ours = RopeTable(LlamaConfig.from_dict({**hf_cfg.to_dict(), "model_type": "llama"}))
    rot = LlamaRotaryEmbedding(hf_cfg)
    np.testing.assert_allclose(ours.inv_freq, rot.inv_freq.numpy(), rtol=1e-6)
    pos = np.array([0, 1, 77, 500, 1000])
    cos, sin = rot(torch.zeros(1, 5, 1), torch.from_numpy(pos)[None])
    c, s = ours.cos_sin(pos)
    np.testing.assert_allclose(c, cos[0].numpy(), atol=2e-4)  # float32 pow differs in the last ulp
    np.testing.assert_allclose(s, sin[0].numpy(), atol=2e-4)
