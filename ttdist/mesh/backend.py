"""The op surface a model runs on a mesh, named after the ttnn ops that implement it.

Two backends implement it: the torch simulator (``ttdist.mesh.sim.backend``, exact collective
semantics, runs anywhere) and ttnn (``ttdist.mesh.ttnn.backend``, real chips). Host arrays
crossing this boundary are numpy, so model code never imports torch or ttnn.

Shapes are per-device ("local") unless a docstring says global. Activations are
token-major: ``[T, width]`` where T is the prompt chunk (prefill) or the batch of users
(decode). Head tensors returned by ``create_qkv_heads`` have a backend-chosen layout;
the model only passes them on to ``rotary``, the cache ops, the SDPA ops and
``concat_heads``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from ttdist.mesh.accounting import CclLedger, DramLedger
from ttdist.mesh.errors import MeshError, PartialTensorError  # noqa: F401  (re-exported)
from ttdist.mesh.placement import Placements
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import MeshSpec, Topology


@dataclass(frozen=True)
class SamplingBatch:
    """Per-user sampling settings for one step; arrays of length B.

    temperature 0 means greedy; top_k 0 and top_p 0 or 1 mean off; seed < 0 means
    unseeded; ``step`` is each user's token index, mixed into the seed so that a seeded
    request draws the same tokens whatever batch it runs in.
    """

    temperature: np.ndarray
    top_k: np.ndarray
    top_p: np.ndarray
    seed: np.ndarray
    step: np.ndarray

    @classmethod
    def greedy(cls, batch: int) -> "SamplingBatch":
        zeros = np.zeros(batch)
        return cls(zeros, zeros.astype(np.int64), zeros, np.full(batch, -1, np.int64), zeros.astype(np.int64))


@dataclass
class TransferLedger:
    """Host <-> device traffic: tensors and bytes written to the mesh and read back from it."""

    uploads: int = 0
    upload_bytes: int = 0
    readbacks: int = 0
    readback_bytes: int = 0

    def upload(self, nbytes: int) -> None:
        self.uploads += 1
        self.upload_bytes += int(nbytes)

    def readback(self, nbytes: int) -> None:
        self.readbacks += 1
        self.readback_bytes += int(nbytes)

    def clear(self) -> None:
        self.uploads = self.upload_bytes = self.readbacks = self.readback_bytes = 0


@dataclass(frozen=True)
class PerDevice:
    """A host array with one piece per chip: ``array[r % R', c % C']`` is chip (r, c)'s (an axis of
    one entry is shared by its chips). Prefill page tables take this form when each column group
    of chips writes its own pool of KV pages (``Layout.user_groups``)."""

    array: np.ndarray


class Backend(Protocol):
    spec: MeshSpec
    ccl: CclLedger
    dram: DramLedger
    transfers: TransferLedger
    name: str
    can_trace: bool  # decode steps may be captured once and replayed (real chips only)

    # host <-> mesh
    def from_host(self, array: np.ndarray, placements: Placements, *, dtype: DType = ..., name: str = ...) -> Any:
        """Place a global host array on the mesh (shard / replicate per axis)."""

    def from_host_per_device(
        self, array: np.ndarray, placements: Placements, *, dtype: DType = ..., name: str = ...
    ) -> Any:
        """Place ``array[r, c]`` on chip (r, c); ``placements`` say what the pieces mean."""

    def zeros(self, shape: Sequence[int], placements: Placements, *, dtype: DType = ..., name: str = ...) -> Any:
        """A zero tensor of global ``shape``."""

    def to_host(self, t: Any) -> np.ndarray:
        """The global tensor: shards concatenated, partials summed, replicas read once."""

    def deallocate(self, t: Any) -> None: ...

    # persistent step inputs (trace-ready: fixed shapes, rewritten in place)
    def input_tensor(self, array: np.ndarray, placements: Placements, *, name: str = ...) -> Any:
        """A device tensor a step reads (token ids, positions, page table, rope indices, sampling
        parameters): ints stay exact; placed once, then rewritten with ``write_input``. ``placements``
        may shard a dim over an axis (each user group's decode rows on its column)."""

    def write_input(self, t: Any, array: np.ndarray) -> None:
        """Overwrite input ``t`` in place with a host array of the same shape and dtype (ttnn:
        ``copy_host_to_device_tensor``), so a captured trace reads the new values."""

    def read_ids(self, t: Any) -> np.ndarray:
        """Token ids ``[B]`` (int64) from a replicated id tensor: the only readback of a serving step."""

    # compute
    def linear(self, x: Any, w: Any, *, out_dtype: DType | None = None) -> Any:
        """``x @ w`` with ``w`` stored ``[K, N]``; placements propagate (column / row parallel)."""

    def add(self, a: Any, b: Any) -> Any: ...

    def multiply(self, x: Any, factor: Any) -> Any:
        """``x`` times a per-device scalar ``factor`` (local ``[1, 1]``, broadcast). A factor that is
        ``Partial`` on an axis (1 on one chip of it, 0 on the others) makes the product ``Partial``
        there: an ``all_reduce`` then hands that chip's ``x`` to every chip of the axis."""

    def silu_mul(self, gate: Any, up: Any) -> Any:
        """``silu(gate) * up`` fused."""

    def embedding(self, ids: np.ndarray | Any, table: Any) -> Any:
        """Rows of ``table`` ([V, H], vocab replicated) for ids ``[T]`` -> ``[T, H]``; ``ids`` is a
        host array or an ``input_tensor`` (the model's token ids and rope indices); ids ``[1, T]``
        sharded along T on an axis give rows sharded on it (``Shard(0)``)."""

    def rms_norm(self, x: Any, weight: Any, *, eps: float, width: int) -> Any:
        """RMSNorm over the last dim; ``width`` is the unpadded size the mean divides by."""

    def rms_norm_pre_all_gather(self, x: Any) -> Any:
        """Local sum of squares over the last dim of a width-fractured tensor."""

    def rms_norm_post_all_gather(self, x: Any, stats: Any, weight: Any, *, eps: float, width: int) -> Any:
        """Normalise a width-fractured tensor with gathered statistics."""

    def slice_rows(self, x: Any, start: int, end: int) -> Any: ...

    def concat(self, parts: Sequence[Any], dim: int = -1) -> Any:
        """Each device's pieces joined along local ``dim`` (same placements; a local op)."""

    # attention
    def create_qkv_heads(self, qkv: Any, n_q: int, n_kv: int, head_dim: int) -> tuple[Any, Any, Any]: ...

    def concat_heads(self, x: Any) -> Any: ...

    def rotary(self, x: Any, cos: Any, sin: Any) -> Any:
        """HF rotate-half RoPE; ``cos``/``sin`` are replicated ``[T, head_dim]``."""

    def paged_cache(self, num_pages: int, n_kv: int, page_size: int, head_dim: int, placements: Placements,
                    *, dtype: DType = ..., name: str = ...) -> Any:
        """A zeroed paged KV cache of logical global shape ``[pages, kv_heads, page_size, head_dim]``
        (KV heads may be sharded); its storage layout is the backend's."""

    def paged_fill_cache(self, cache: Any, x: Any, page_table: np.ndarray | PerDevice, start_pos: int) -> None:
        """Write one user's K or V for positions ``start_pos..`` through its page table row ``[W]``
        (or each chip through its own row: a ``PerDevice`` ``[R', C', W]``)."""

    def paged_update_cache(self, cache: Any, x: Any, positions: Any, page_table: Any) -> None:
        """Write one token per user at its own position (position -1: an idle slot, nothing written).
        ``positions`` ``[B]`` and ``page_table`` ``[B, W]`` are host arrays or input tensors; inputs
        whose rows are sharded on an axis (``x`` holding the same users per chip) name each chip's
        own users, in the page ids of that chip's cache."""

    def read_pages(self, cache: Any, pages: Sequence[int]) -> np.ndarray:
        """Logical pages ``pages`` (dim 0 of the cache's global shape) as the chips store them, ``[n,
        kv_heads, page_size, head_dim]`` float32: each KV head from the chips holding it, each page from
        the chips of its pool (a block-float cache reads back its block values exactly)."""

    def write_pages(self, cache: Any, pages: Sequence[int], data: np.ndarray) -> None:
        """Write ``read_pages``' arrays into logical pages ``pages``; every other page is left as it was."""

    def sdpa_prefill(
        self, q: Any, k: Any, v: Any, k_cache: Any, v_cache: Any, page_table: np.ndarray | PerDevice, start_pos: int,
        scale: float,
    ) -> Any:
        """Causal GQA attention for one user's chunk at ``start_pos`` (earlier tokens from the cache
        through ``page_table``, as in ``paged_fill_cache``). With a ``PerDevice`` table each chip reads
        through its own row; a chip whose row names only a scratch page gives finite rows the caller
        masks (``multiply`` + ``all_reduce``)."""

    def sdpa_decode(self, q: Any, k_cache: Any, v_cache: Any, page_table: Any, positions: Any, scale: float) -> Any:
        """One query token per user attending to its cached positions ``0..pos`` (idle slots, position
        -1, give finite rows nobody reads); per-chip inputs as in ``paged_update_cache``."""

    # collectives
    def all_gather(
        self, x: Any, dim: int, cluster_axis: int | None = None, *, topology: Topology | None = None, num_links: int | None = None
    ) -> Any: ...

    def reduce_scatter(
        self, x: Any, dim: int, cluster_axis: int | None = None, *, topology: Topology | None = None, num_links: int | None = None
    ) -> Any: ...

    def all_reduce(
        self, x: Any, cluster_axis: int | None = None, *, topology: Topology | None = None, num_links: int | None = None
    ) -> Any: ...

    # decode traces (``can_trace`` only)
    def capture(self, step: Any) -> Any:
        """Capture ``step()`` (device ops only, no host transfers) once; a handle for ``replay``."""

    def replay(self, captured: Any) -> Any:
        """Run the captured step again on the current input tensors; its output tensor."""

    def release(self, captured: Any) -> None: ...

    # sampling
    def sample(self, logits: Any, vocab_size: int, params: Any, cluster_axis: int, allowed: Any = None) -> Any:
        """Token ids ``[B]`` (a replicated device tensor) drawn on the mesh from vocab-sharded
        logits ``[B, V/n]`` (sharded on ``cluster_axis``), by ``ttdist.mesh.sampling``'s algorithm:
        ids from ``vocab_size`` on are padding, never drawn; ``params`` is the ``[B, 4]`` input
        tensor of ``sampling.device_params``. Logits never leave the mesh. ``allowed`` (optional): the
        users' grammar masks, an int32 input tensor ``[B, V/32]`` of ``token_mask.pack`` words sharded
        like the logits; each chip masks its slice before its top-K (left out: no extra op)."""

    # log-probabilities (``ttdist.mesh.logprobs``): a separate path, run only when a row asks
    def sample_logprobs(self, logits: Any, vocab_size: int, params: Any, cluster_axis: int, penalty_params: Any = None,
                        allowed: Any = None, *, processed: bool = False) -> tuple[Any, Any]:
        """``sample``'s ids and, per user, a ``[B, 1 + 2k]`` row of ``logprobs.rows``: the drawn token's
        logprob, the top k logprobs and their ids, of the ``logits`` given, or, when ``processed``,
        of those logits over the temperature with the grammar mask ``allowed`` applied."""

    def prompt_logprobs(self, logits: Any, vocab_size: int, targets: Any, cluster_axis: int) -> Any:
        """Rows ``[T, 1 + 2k]`` for raw logits ``[T, V/n]`` scoring ``targets`` (a ``[T, 1]`` float32
        tensor of ids, or the ``[B]`` ids ``sample`` drew: a decode step's raw logprobs when the
        token was drawn from penalized or masked logits)."""

    def read_rows(self, t: Any) -> np.ndarray:
        """A small replicated float32 tensor ``[B, W]`` (logprob rows) read once."""
