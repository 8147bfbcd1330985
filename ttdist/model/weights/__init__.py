"""Hugging Face Llama checkpoints -> every chip's weight pieces, through the converted-weight cache.

One direction, one module per step (each imports only the ones before it):

    safetensors_file  the file format: headers read, tensors written at their offsets
    hf_checkpoint     an HF checkpoint directory: config, tensor names and shapes, lazy reads
    layout_arrays     HF tensors -> the layout's global arrays -> ``[R', C', *local]`` pieces
    cache_format      an entry on disk: file names, the tensor table, the manifest
    convert           checkpoint -> entry, streamed one tensor (or row slab) at a time
    sharded_load      entry -> ``ShardedWeights`` for a replica, one tensor at a time

How the pieces reach a replica on another node is the runtime's business
(``ttdist.runtime.remote_shards``). No torch anywhere on this path.
"""

from ttdist.model.weights.convert import convert_checkpoint
from ttdist.model.weights.hf_checkpoint import expected_shapes, open_checkpoint
from ttdist.model.weights.sharded_load import ShardedWeights, load_converted, load_weights, prepare

__all__ = ["ShardedWeights", "convert_checkpoint", "expected_shapes", "load_converted", "load_weights", "open_checkpoint",
           "prepare"]
