"""``MeshModelRunner``: the engine's ModelRunner on a mesh backend (sim or ttnn).

It turns the engine's plain-Python inputs into the model's fixed-shape step inputs, runs the
model, and samples on the mesh (only token ids come back). ``kv_budget`` sizes the paged KV cache from the mesh's
DRAM: pages = (chip DRAM - weights - reserve) / bytes per page per chip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttdist.engine.runner import DecodeInput, PrefillInput, RunnerInfo, SamplingSpec
from ttdist.mesh import make_backend
from ttdist.mesh.backend import MeshError, SamplingBatch
from ttdist.mesh.placement import REPLICATED
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import MeshSpec, parse_mesh
from ttdist.model.config import LlamaConfig
from ttdist.model.layout import Layout
from ttdist.mesh.sampling import device_params
from ttdist.model.llama import CacheConfig, LlamaModel, ModelOptions, StepInputs
from ttdist.model.user_groups import SlotMap, UserGroupError
from ttdist.model.weights import ShardedWeights, load_weights

DEFAULT_MAX_PAGES = 4096


@dataclass(frozen=True)
class KvBudget:
    weight_bytes_per_chip: int
    page_bytes_per_chip: int
    reserve_bytes_per_chip: int
    num_pages: int            # per chip: one user group's pool
    user_groups: int = 1

    @property
    def total_pages(self) -> int:
        """The replica's pages: every user group's pool."""
        return self.num_pages * self.user_groups


def weight_bytes_per_chip(layout: Layout, dtype: DType) -> int:
    """Tile-padded bytes one chip holds for the weights (matmul weights in ``dtype``)."""
    from math import prod

    def tiles(shape):
        dims = list(shape) if len(shape) > 1 else [1, *shape]
        dims[-1] = -(-dims[-1] // 32) * 32
        dims[-2] = -(-dims[-2] // 32) * 32
        return prod(dims)

    per_layer = 0.0
    top = 0.0
    for plan in layout.plans():
        is_matmul = len(plan.local_shape) == 2 and plan.name != "embedding"
        bpe = (dtype if is_matmul else DType.bfloat16).bytes_per_element
        if dtype is DType.float32:
            bpe = 4.0
        size = tiles(plan.local_shape) * bpe
        if plan.name in ("embedding", "norm", "lm_head"):
            top += size
        else:
            per_layer += size
    return int(top + per_layer * layout.config.num_hidden_layers)


def page_bytes_per_chip(layout: Layout, page_size: int, dtype: DType) -> int:
    """K and V for one page in every layer, on one chip."""
    c = layout.config
    per = layout.n_kv_local * page_size * c.head_dim * dtype.bytes_per_element
    return int(2 * per * c.num_hidden_layers)


def kv_budget(path_or_config, *, mesh: str | MeshSpec, dtype: str | DType = "bfloat16", page_size: int = 32, reserve_fraction: float = 0.1, kv_dtype: str | DType = "bfloat16") -> KvBudget:
    config = path_or_config if isinstance(path_or_config, LlamaConfig) else LlamaConfig.from_dir(path_or_config)
    spec = parse_mesh(mesh) if isinstance(mesh, str) else mesh
    layout = Layout(config, spec)
    weights = weight_bytes_per_chip(layout, DType.parse(dtype))
    page = page_bytes_per_chip(layout, page_size, DType.parse(kv_dtype))
    reserve = int(spec.dram_bytes_per_chip * reserve_fraction)
    free = spec.dram_bytes_per_chip - weights - reserve
    if free < page:
        raise MemoryError(
            f"{config.num_hidden_layers}-layer model needs {weights:,} bytes of weights per chip on {spec.shape_str}; "
            f"{spec.dram_bytes_per_chip:,} bytes of DRAM minus a {reserve:,} byte reserve leaves no room for the KV cache"
        )
    return KvBudget(weights, page, reserve, free // page, layout.user_groups)


def _sampling_batch(specs: list[SamplingSpec]) -> SamplingBatch:
    return SamplingBatch(
        temperature=np.array([s.temperature for s in specs], dtype=np.float64),
        top_k=np.array([s.top_k for s in specs], dtype=np.int64),
        top_p=np.array([s.top_p for s in specs], dtype=np.float64),
        seed=np.array([-1 if s.seed is None else s.seed for s in specs], dtype=np.int64),
        step=np.array([s.step for s in specs], dtype=np.int64),
    )


class MeshModelRunner:
    """Runs prefill chunks and decode batches of a Llama on one mesh.

    Decode is trace-ready: every step runs the full ``max_batch`` slot batch on persistent
    input tensors (idle slots at position -1; with user groups, ``decode_rows`` rows), rewriting only the inputs that changed, and reads
    back only the B sampled ids. With ``trace_decode`` (default: on where the backend can trace,
    i.e. real chips) the first decode step runs eagerly (compiling every program), the second
    is captured, and every later step replays the capture. All persistent device memory (weights,
    KV cache, inputs) exists before the capture, as tracing requires.

    User groups (2D meshes, ``ttdist.model.user_groups``): ``num_pages`` (given or fitted) and
    ``info.num_pages`` count every group's pages, ``info.user_groups`` groups of
    ``num_pages // user_groups``; a user's group is its first page id's, and it decodes in a slot
    of that group's range (``max_batch`` must be a multiple of the groups).
    """

    def __init__(self, weights: ShardedWeights, *, backend: str = "sim", page_size: int = 32, num_pages: int | None = None,
                 max_pages: int | None = None,
                 max_batch: int = 32, max_context: int | None = None, kv_dtype: str | DType | None = None,
                 trace_decode: bool | None = None, logits_dtype: str | DType | None = None, lm_head_chunk: int = 16384,
                 backend_options: dict | None = None):
        config = weights.config
        kv = DType.parse(kv_dtype) if kv_dtype else weights.precision.kv_cache
        # no num_pages: the model sizes its cache from the backend's DRAM ledger once the weights are placed;
        # a simulated cache lives in host RAM, so it is capped at max_pages (DEFAULT_MAX_PAGES)
        host_cap = max_pages if max_pages is not None else (DEFAULT_MAX_PAGES if backend == "sim" else None)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        groups = weights.layout().user_groups
        if max_batch % groups:
            raise UserGroupError(f"max_batch {max_batch} must be a multiple of the {groups} user groups of a "
                                 f"{weights.mesh.shape_str} mesh (each column group decodes max_batch // {groups} users)")
        if num_pages and num_pages % groups:
            raise UserGroupError(f"num_pages {num_pages} must be a multiple of the {groups} user groups of a "
                                 f"{weights.mesh.shape_str} mesh (each group holds num_pages // {groups})")
        made = dict(backend_options or {})
        if backend == "ttnn":  # ttnn stores activations in a format of their own; the simulator computes in float32
            made.setdefault("activation_dtype", weights.precision.activations)
        self.backend = make_backend(weights.mesh, backend, **made)
        context = min(max_context or config.max_position_embeddings, config.max_position_embeddings)
        options = ModelOptions(max_positions=context, lm_head_chunk=lm_head_chunk,
                               logits_dtype=DType.parse(logits_dtype) if logits_dtype else None, max_batch=max_batch)
        cache = CacheConfig((num_pages or 0) // groups, page_size, kv, max_pages=host_cap)
        self.model = LlamaModel(self.backend, weights, cache, options)
        num_pages = self.model.groups.total_pages
        self.kv_fit = self.model.kv_fit
        self.trace_decode = self.backend.can_trace if trace_decode is None else bool(trace_decode)
        if self.trace_decode and not self.backend.can_trace:
            raise MeshError(f"trace_decode: the {self.backend.name} backend cannot capture traces here (real chips only)")
        self.slots = SlotMap(max_batch, self.model.groups)
        self.inputs: StepInputs | None = None
        self._warm = False
        self._trace = None
        self._rng = np.random.default_rng()
        self.info = RunnerInfo(
            vocab_size=config.vocab_size,
            max_context=context,
            page_size=page_size,
            num_pages=num_pages,
            max_batch=max_batch,
            eos_token_ids=tuple(config.eos_token_ids),
            user_groups=groups,
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, mesh: str = "1x1", backend: str = "sim", dtype: str = "float32",
                        page_size: int = 32, num_pages: int | None = None, max_batch: int = 32, max_context: int | None = None,
                        cache_dir: str | Path | None = None, **options) -> "MeshModelRunner":
        weights = load_weights(path, mesh=mesh, dtype=dtype, cache_dir=cache_dir)
        return cls(weights, backend=backend, page_size=page_size, num_pages=num_pages, max_batch=max_batch, max_context=max_context, **options)

    def dram(self):
        """The fullest chip's DRAM from the backend's own ledger (weights, KV cache, other)."""
        return self.backend.dram.usage()

    @classmethod
    def from_sharded(cls, weights: ShardedWeights, **options) -> "MeshModelRunner":
        return cls(weights, **options)

    # ------------------------------------------------------------------ prefill
    def prefill(self, inp: PrefillInput) -> int | None:
        logits = self.model.prefill_forward(inp.token_ids, inp.start_pos, inp.page_table)
        if not inp.sample:
            return None
        params = self.backend.input_tensor(device_params(_sampling_batch([inp.sampling]), self._rng), REPLICATED, name="input.sampling")
        return int(self.backend.read_ids(self.model.sample(logits, params))[0])

    # ------------------------------------------------------------------ decode
    def _write_decode(self, inp: DecodeInput) -> list[int]:
        """Put the users in their slots of the persistent inputs; upload what changed; their slots."""
        n = len(inp.token_ids)
        if n > self.info.max_batch:
            raise ValueError(f"decode: {n} users exceed the runner's {self.info.max_batch} slots")
        groups = [self.model.groups.group_of([p for p in t if p >= 0]) for t in inp.page_tables]
        slots = self.slots.assign(list(inp.seq_ids), n, groups)
        rows = self.model.groups.rows
        idle = [None] * rows
        tokens, positions, tables = list(idle), list(idle), list(idle)
        for i, s in enumerate(slots):
            tokens[s], positions[s], tables[s] = inp.token_ids[i], inp.positions[i], inp.page_tables[i]
        busy = [s for s in range(rows) if tokens[s] is not None]
        params = np.tile(device_params(SamplingBatch.greedy(1)), (rows, 1))
        if inp.sampling:
            params[slots] = device_params(_sampling_batch(list(inp.sampling)), self._rng)
        host = self.model.host_inputs([tokens[s] for s in busy], [positions[s] for s in busy],
                                      [tables[s] for s in busy], params[busy], rows, slots=busy)
        if self.inputs is None:
            self.inputs = self.model.place_inputs(host)
        else:
            self.model.write_inputs(self.inputs, host)
        return slots

    def _decode_graph(self):
        return self.model.sample(self.model.decode_step(self.inputs), self.inputs.sampling)

    def _run_decode(self):
        if not self.trace_decode:
            return self._decode_graph()
        if not self._warm:  # the compile pass: every program is built before the capture
            self._warm = True
            return self._decode_graph()
        if self._trace is None:
            self._trace = self.backend.capture(self._decode_graph)
        return self.backend.replay(self._trace)

    def decode(self, inp: DecodeInput) -> list[int]:
        slots = self._write_decode(inp)
        ids = self.backend.read_ids(self._run_decode())
        return [int(ids[s]) for s in slots]

    def close(self) -> None:
        if self._trace is not None:
            self.backend.release(self._trace)
            self._trace = None

    # for tests and benchmarks: the logits themselves (never traced)
    def prefill_logits(self, token_ids, start_pos: int, page_table) -> np.ndarray:
        return self.model.logits_to_host(self.model.prefill_forward(token_ids, start_pos, page_table))

    def decode_logits(self, token_ids, positions, page_tables) -> np.ndarray:
        n = len(token_ids)
        slots = self._write_decode(DecodeInput(list(token_ids), list(positions), [list(t) for t in page_tables], [SamplingSpec()] * n))
        return self.model.logits_to_host(self.model.decode_step(self.inputs))[slots]
