"""ttdist: a distributed runtime that serves tensor-parallel Llama on Tenstorrent meshes."""

__version__ = "0.1.0"
