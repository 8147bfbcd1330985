"""The emulated ``ttnn`` module and its submodules ``ttnn.experimental`` and ``ttnn.transformer``.

Each is a real module object whose attributes are the emulator's names, spelled as ttnn
spells them (``ttnn.bfloat16``, ``ttnn.TILE_LAYOUT``, ``ttnn.DRAM_MEMORY_CONFIG``, ...). A name
the emulator does not model raises ``NotModeled`` (an ``AttributeError`` and a
``NotImplementedError``) naming it, so nothing passes through silently.
"""

from __future__ import annotations

import importlib.machinery
import types as pytypes

from ttdist.mesh.ttnn_emu import device as dev
from ttdist.mesh.ttnn_emu import mapping, ops_ccl, ops_data, ops_eltwise, ops_heads, ops_matmul, ops_norm, ops_sdpa, queues
from ttdist.mesh.ttnn_emu import types as t
from ttdist.mesh.ttnn_emu.tensor import Shape, Tensor, TensorDeallocated


class NotModeled(AttributeError, NotImplementedError):
    """A ttnn name the emulator does not model."""


def _module(name: str, attrs: dict) -> pytypes.ModuleType:
    mod = pytypes.ModuleType(name, f"ttdist's numpy emulation of {name} (ttdist.mesh.ttnn_emu)")
    mod.__dict__.update(attrs)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name == "ttnn")
    if name == "ttnn":
        mod.__path__ = []

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise NotModeled(f"ttnn emulator: {name}.{attr} is not modeled")

    mod.__getattr__ = __getattr__
    return mod


_TYPES = {n: getattr(t, n) for n in (
    "DataType", "Layout", "TensorMemoryLayout", "BufferType", "ShardOrientation", "ShardStrategy", "MathFidelity", "Topology",
    "FabricConfig", "DispatchCoreType", "DispatchCoreAxis", "UnaryOpType", "StorageType", "CoreCoord", "CoreRange", "CoreRangeSet", "CoreGrid",
    "ShardSpec", "MemoryConfig", "DRAM_MEMORY_CONFIG", "L1_MEMORY_CONFIG", "L1_HEIGHT_SHARDED_MEMORY_CONFIG",
    "L1_WIDTH_SHARDED_MEMORY_CONFIG", "L1_BLOCK_SHARDED_MEMORY_CONFIG", "create_sharded_memory_config",
    "num_cores_to_corerangeset", "WormholeComputeKernelConfig", "MatmulMultiCoreReuseMultiCastProgramConfig",
    "MatmulMultiCoreReuseMultiCast1DProgramConfig", "MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig",
    "SDPAProgramConfig", "DispatchCoreConfig", "MeshShape", "MeshCoordinate", "PlacementShard", "PlacementReplicate",
    "MeshMapperConfig", "TILE")}

_CONSTANTS = {
    "bfloat16": t.DataType.BFLOAT16, "float32": t.DataType.FLOAT32, "bfloat8_b": t.DataType.BFLOAT8_B,
    "bfloat4_b": t.DataType.BFLOAT4_B, "uint32": t.DataType.UINT32, "int32": t.DataType.INT32, "uint16": t.DataType.UINT16,
    "uint8": t.DataType.UINT8, "ROW_MAJOR_LAYOUT": t.Layout.ROW_MAJOR, "TILE_LAYOUT": t.Layout.TILE, "TILE_SIZE": t.TILE,
}

_QUEUES = {
    "QueueId": queues.QueueId, "MeshEvent": queues.MeshEvent, "record_event": queues.record_event,
    "wait_for_event": queues.wait_for_event, "event_synchronize": queues.event_synchronize,
    "command_queue": queues.command_queue, "QueueRaceError": queues.QueueRaceError,
    "get_current_command_queue_id_for_thread": queues.get_current_command_queue_id_for_thread,
}

_HOST = {
    # devices, traces, transfers (those that move data take ``cq_id``)
    "open_mesh_device": dev.open_mesh_device, "close_mesh_device": dev.close_mesh_device, "set_fabric_config": dev.set_fabric_config,
    "get_num_devices": dev.get_num_devices, "synchronize_device": dev.synchronize_device, "get_memory_view": dev.get_memory_view,
    "begin_trace_capture": dev.begin_trace_capture, "end_trace_capture": dev.end_trace_capture,
    "execute_trace": dev.execute_trace, "release_trace": dev.release_trace, "MeshDevice": dev.MeshDevice,
    "copy_host_to_device_tensor": dev.copy_host_to_device_tensor, "deallocate": dev.deallocate,
    "to_device": dev.to_device, "from_device": dev.from_device,
    "create_mesh_mapper": mapping.create_mesh_mapper, "from_host_shards": mapping.from_host_shards,
    "get_device_tensors": mapping.get_device_tensors, "Tensor": Tensor, "Shape": Shape,
    # errors the emulator raises
    "TensorDeallocated": TensorDeallocated, "TraceError": dev.TraceError, "NotModeled": NotModeled,
}

_OPS = {   # every op takes ttnn's ``queue_id=`` (``queues.on_queue``)
    # data movement and creation
    "reshape": ops_data.reshape, "permute": ops_data.permute, "slice": ops_data.slice, "concat": ops_data.concat,
    "to_memory_config": ops_data.to_memory_config, "sharded_to_interleaved": ops_data.sharded_to_interleaved,
    "interleaved_to_sharded": ops_data.interleaved_to_sharded, "zeros": ops_data.zeros, "ones": ops_data.ones,
    "full": ops_data.full,
    # math
    "add": ops_eltwise.add, "subtract": ops_eltwise.subtract, "multiply": ops_eltwise.multiply, "mul": ops_eltwise.mul,
    "lt": ops_eltwise.lt, "gt": ops_eltwise.gt, "ge": ops_eltwise.ge, "le": ops_eltwise.le, "eq": ops_eltwise.eq,
    "ne": ops_eltwise.ne, "exp": ops_eltwise.exp, "log": ops_eltwise.log, "reciprocal": ops_eltwise.reciprocal, "neg": ops_eltwise.neg,
    "silu": ops_eltwise.silu, "sum": ops_eltwise.sum, "bitwise_and": ops_eltwise.bitwise_and,
    "bitwise_right_shift": ops_eltwise.bitwise_right_shift, "typecast": ops_eltwise.typecast, "topk": ops_eltwise.topk,
    "matmul": ops_matmul.matmul, "linear": ops_matmul.linear, "rms_norm": ops_norm.rms_norm,
    "rms_norm_pre_all_gather": ops_norm.rms_norm_pre_all_gather, "rms_norm_post_all_gather": ops_norm.rms_norm_post_all_gather,
    "embedding": ops_norm.embedding,
    # collectives
    "all_gather": ops_ccl.all_gather, "reduce_scatter": ops_ccl.reduce_scatter, "all_reduce": ops_ccl.all_reduce,
}

_EXPERIMENTAL = {
    "nlp_create_qkv_heads": ops_heads.nlp_create_qkv_heads, "nlp_create_qkv_heads_decode": ops_heads.nlp_create_qkv_heads_decode,
    "nlp_concat_heads": ops_heads.nlp_concat_heads, "nlp_concat_heads_decode": ops_heads.nlp_concat_heads_decode,
    "rotary_embedding_hf": ops_heads.rotary_embedding_hf, "paged_update_cache": ops_sdpa.paged_update_cache,
    "paged_fill_cache": ops_sdpa.paged_fill_cache,
}

_TRANSFORMER = {
    "scaled_dot_product_attention": ops_sdpa.scaled_dot_product_attention,
    "chunked_scaled_dot_product_attention": ops_sdpa.chunked_scaled_dot_product_attention,
    "paged_scaled_dot_product_attention_decode": ops_sdpa.paged_scaled_dot_product_attention_decode,
    "SDPAProgramConfig": t.SDPAProgramConfig,
}


_FUNCTIONS = {**_HOST, **_QUEUES, **_OPS}


def _ops(names: dict) -> dict:
    return {k: queues.on_queue(v) if callable(v) and not isinstance(v, type) else v for k, v in names.items()}


def build() -> dict[str, pytypes.ModuleType]:
    """Fresh ``ttnn``, ``ttnn.experimental`` and ``ttnn.transformer`` modules, keyed by import name."""
    experimental = _module("ttnn.experimental", _ops(_EXPERIMENTAL))
    transformer = _module("ttnn.transformer", _ops(_TRANSFORMER))
    root = _module("ttnn", {**_TYPES, **_CONSTANTS, **_HOST, **_QUEUES, **_ops(_OPS), "experimental": experimental,
                            "transformer": transformer, "EMULATED": True})
    return {"ttnn": root, "ttnn.experimental": experimental, "ttnn.transformer": transformer}


def names() -> dict[str, list[str]]:
    """Every name each emulated module models (for docs and tests)."""
    return {"ttnn": sorted({**_TYPES, **_CONSTANTS, **_FUNCTIONS}), "ttnn.experimental": sorted(_EXPERIMENTAL),
            "ttnn.transformer": sorted(_TRANSFORMER)}
