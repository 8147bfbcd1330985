"""``MeshModelRunner``: the engine's ModelRunner on a mesh backend (sim or ttnn).

It turns the engine's plain-Python inputs into the model's fixed-shape step inputs, runs the
model, and samples on the mesh (only token ids come back). ``kv_budget`` sizes the paged KV cache from the mesh's
DRAM: pages = (chip DRAM - weights - reserve) / bytes per page per chip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttdist.engine.runner import (LOGPROBS_MODES, DecodeInput, DecodeLogprobs, PrefillInput, PrefillLogprobs, RunnerInfo,
                                  SamplingSpec)
from ttdist.mesh import make_backend, token_mask
from ttdist.mesh.backend import MeshError, SamplingBatch
from ttdist.mesh.placement import REPLICATED, Shard, with_axis
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import MeshSpec, parse_mesh
from ttdist.model import kv_pages
from ttdist.model.config import LlamaConfig
from ttdist.model.kv_budget import LoadTimes, Stopwatch
from ttdist.model.layout import Layout
from ttdist.mesh.sampling import device_params
from ttdist.model.llama import CacheConfig, LlamaModel, ModelOptions, StepInputs
from ttdist.model.logprob_steps import prefill_prompt_logprobs, rows_to_logprobs, sample_with_logprobs
from ttdist.model.penalty_rows import PenaltyRows, penalty_arrays, place_state
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
                 backend_options: dict | None = None, logprobs_mode: str = "raw"):
        config = weights.config
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be 'raw' or 'processed', got {logprobs_mode!r}")
        self.processed_logprobs = logprobs_mode == "processed"
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
        building = Stopwatch()
        self.model = LlamaModel(self.backend, weights, cache, options)
        built = building.elapsed()   # placing the weights (read from the cache as they go), then the KV cache
        self.load_times = LoadTimes(weight_load_s=built - self.model.kv_sizing_s, kv_sizing_s=self.model.kv_sizing_s)
        num_pages = self.model.groups.total_pages
        self.kv_fit = self.model.kv_fit
        self.trace_decode = self.backend.can_trace if trace_decode is None else bool(trace_decode)
        if self.trace_decode and not self.backend.can_trace:
            raise MeshError(f"trace_decode: the {self.backend.name} backend cannot capture traces here (real chips only)")
        self.config_vocab = config.vocab_size
        self.slots = SlotMap(max_batch, self.model.groups)
        self.inputs: StepInputs | None = None
        # decode graphs compiled / captured, keyed by (with logprobs, penalized, grammar-masked): the
        # plain step is (False, False, False), so a batch without these features runs the ops it always did
        self._warm: set[tuple[bool, bool, bool]] = set()
        self._traces: dict[tuple[bool, bool, bool], object] = {}
        self.penalties = PenaltyRows(self.backend, self.model.groups.rows, self.model.layout.vocab, self.model.vocab_axis)
        self._penalized = False
        self._allowed = None                   # the persistent grammar-mask input (see _write_decode)
        self._allowed_host: np.ndarray | None = None
        self._masked = False
        self._rng = np.random.default_rng()
        self.info = RunnerInfo(
            vocab_size=config.vocab_size,
            max_context=context,
            page_size=page_size,
            num_pages=num_pages,
            max_batch=max_batch,
            eos_token_ids=tuple(config.eos_token_ids),
            user_groups=groups,
            logprobs=True,
            kv_identity=kv_pages.identity(weights, self.backend.name, kv, page_size),
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
        ids = self._draw(logits, self._prefill_params(inp), self._prefill_state(inp), logprobs=False,
                         allowed=self._prefill_allowed(inp), count=False)
        return int(self.backend.read_ids(ids)[0])

    def _prefill_params(self, inp: PrefillInput):
        return self.backend.input_tensor(device_params(_sampling_batch([inp.sampling]), self._rng), REPLICATED, name="input.sampling")

    def _prefill_state(self, inp: PrefillInput):
        """The prefilling user's penalty state, placed for this one draw (None: not penalized)."""
        if inp.sampling.penalties is None:
            return None
        return place_state(self.backend, penalty_arrays(inp.sampling, self.model.layout.vocab), self.model.vocab_axis, "input.penalties")

    def _prefill_allowed(self, inp: PrefillInput):
        """The prefilling user's grammar mask, placed for this one draw (None: no grammar)."""
        words = self._mask_words([inp.sampling], 1, [0])
        return None if words is None else self.backend.input_tensor(words, self._mask_placement(), name=token_mask.INPUT_NAME)
    # ------------------------------------------------------------------ grammar masks
    def _mask_placement(self):
        return with_axis(REPLICATED, self.model.vocab_axis, Shard(1))

    def _mask_words(self, specs: list[SamplingSpec], rows: int, slots: list[int]) -> np.ndarray | None:
        """The chips' grammar-mask words ``[rows, V/32]`` (``token_mask.pack``), every token allowed in
        rows without a grammar; None when no user has one (the step then runs without a mask)."""
        users = [i for i, s in enumerate(specs) if s.allowed is not None]
        if not users:
            return None
        lay = self.model.layout
        words = token_mask.all_allowed(rows, lay.vocab_local, lay.n_inner)
        rows_in = np.stack([np.asarray(specs[i].allowed, dtype=np.int32) for i in users])
        words[[slots[i] for i in users]] = token_mask.pack(rows_in, lay.vocab_local, lay.n_inner)
        return words

    def _write_allowed(self, words: np.ndarray) -> None:
        if self._allowed is None:
            self._allowed = self.backend.input_tensor(words, self._mask_placement(), name=token_mask.INPUT_NAME)
            self._allowed_host = words.copy()
        elif not np.array_equal(self._allowed_host, words):
            self.backend.write_input(self._allowed, words)
            self._allowed_host = words.copy()

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
        words = self._mask_words(list(inp.sampling), rows, slots) if inp.sampling else None
        self._masked = words is not None
        if words is not None:
            self._write_allowed(words)
        host = self.model.host_inputs([tokens[s] for s in busy], [positions[s] for s in busy],
                                      [tables[s] for s in busy], params[busy], rows, slots=busy)
        if self.inputs is None:
            self.inputs = self.model.place_inputs(host)
            if self.trace_decode and words is None:  # persistent memory exists before any capture
                lay = self.model.layout
                self._write_allowed(token_mask.all_allowed(rows, lay.vocab_local, lay.n_inner))
        else:
            self.model.write_inputs(self.inputs, host)
        self._penalized = PenaltyRows.wanted(inp.sampling)
        if self._penalized:  # only a batch with a penalized user runs (and uploads for) the penalized step
            self.penalties.prepare(slots, list(inp.sampling), list(inp.seq_ids) or [f"#{i}" for i in range(n)])
        return slots

    def _draw(self, logits, params, state, logprobs: bool, allowed=None, count: bool = True):
        """Token ids, or (ids, logprob rows) with ``logprobs``. With penalty ``state`` each chip's
        vocab slice is penalized first, the draw applies min_p, and the drawn ids are counted on the
        device; with ``allowed`` (grammar-mask words) each chip masks its slice before its top-K.
        Logprobs are of the model's raw logits (the default mode: the drawn token scored against
        them, their own top N, on the mesh), or with ``processed_logprobs`` of the distribution the
        token was drawn from (penalized, masked, over the temperature)."""
        be, axis = self.backend, self.model.vocab_axis
        if state is None and not logprobs:
            return self.model.sample(logits, params, allowed)
        raw, penalty_params = logits, None
        raw_needed = logprobs and not self.processed_logprobs and (state is not None or allowed is not None)
        if state is not None:
            logits, penalty_params = be.penalize(logits, state, in_place=not raw_needed), state.params
        if raw_needed:   # raw logprobs of a token drawn from processed logits: scored like a prompt token
            ids = be.sample(logits, self.config_vocab, params, axis, penalty_params, allowed=allowed)
            out = (ids, be.prompt_logprobs(raw, self.config_vocab, ids, axis))
        elif logprobs:
            out = sample_with_logprobs(self.model, logits, params, penalty_params, allowed, processed=self.processed_logprobs)
            ids = out[0]
        else:
            out = ids = be.sample(logits, self.config_vocab, params, axis, penalty_params, allowed=allowed)
        if state is not None and count:
            be.count_tokens(state, ids, axis)
        return out

    def _decode_graph(self, mode: tuple[bool, bool, bool]):
        logprobs, penalized, masked = mode
        state = self.penalties.state if penalized else None
        return self._draw(self.model.decode_step(self.inputs), self.inputs.sampling, state, logprobs,
                          allowed=self._allowed if masked else None)

    def _run_decode(self, logprobs: bool = False):
        """The decode graph for this batch (plain, or with logprobs, penalties, grammar masks in any
        combination); each compiled, then captured and replayed on its own when tracing."""
        mode = (logprobs, self._penalized, self._masked)
        if not self.trace_decode:
            return self._decode_graph(mode)
        if mode not in self._warm:  # the compile pass: every program is built before the capture
            self._warm.add(mode)
            return self._decode_graph(mode)
        if mode not in self._traces:
            self._traces[mode] = self.backend.capture(lambda: self._decode_graph(mode))
        return self.backend.replay(self._traces[mode])

    @property
    def _trace(self):
        """The plain decode step's captured trace (None before its capture)."""
        return self._traces.get((False, False, False))

    def decode(self, inp: DecodeInput) -> list[int]:
        slots = self._write_decode(inp)
        ids = self.backend.read_ids(self._run_decode())
        if self._penalized:
            self.penalties.observe(ids)
        return [int(ids[s]) for s in slots]

    def decode_logprobs(self, inp: DecodeInput) -> DecodeLogprobs:
        slots = self._write_decode(inp)
        ids_t, rows_t = self._run_decode(logprobs=True)
        ids = self.backend.read_ids(ids_t)
        rows = self.backend.read_rows(rows_t)
        tokens = [int(ids[s]) for s in slots]
        return DecodeLogprobs(tokens, rows_to_logprobs(rows[slots], tokens, [s.logprobs for s in inp.sampling]))

    def prefill_logprobs(self, inp: PrefillInput) -> PrefillLogprobs:
        prompt = []
        if inp.prompt_targets:
            logits, rows = prefill_prompt_logprobs(self.model, inp.token_ids, inp.start_pos, inp.page_table, inp.prompt_targets)
            prompt = rows_to_logprobs(rows, inp.prompt_targets, [inp.prompt_logprobs] * len(rows))
        else:
            logits = self.model.prefill_forward(inp.token_ids, inp.start_pos, inp.page_table)
        if not inp.sample:
            return PrefillLogprobs(None, None, prompt)
        params, state = self._prefill_params(inp), self._prefill_state(inp)
        if inp.sampling.logprobs is None:
            ids = self._draw(logits, params, state, logprobs=False, allowed=self._prefill_allowed(inp), count=False)
            return PrefillLogprobs(int(self.backend.read_ids(ids)[0]), None, prompt)
        ids_t, rows_t = self._draw(logits, params, state, logprobs=True, allowed=self._prefill_allowed(inp), count=False)
        token = int(self.backend.read_ids(ids_t)[0])
        sampled = rows_to_logprobs(self.backend.read_rows(rows_t), [token], [inp.sampling.logprobs])[0]
        return PrefillLogprobs(token, sampled, prompt)

    # ------------------------------------------------------------------ KV pages for the KV tiers
    def read_kv_pages(self, page_ids: list[int]) -> list[np.ndarray]:
        """Each page's K and V in every layer as stored: ``[layers, 2, kv_heads, page_size, hd]`` per
        page (``kv_pages``), the same whichever user group's pool it came from."""
        return kv_pages.read(self.backend, self.model, page_ids)

    def write_kv_pages(self, page_ids: list[int], pages: list[np.ndarray]) -> None:
        kv_pages.write(self.backend, self.model, page_ids, pages)

    def close(self) -> None:
        for trace in self._traces.values():
            self.backend.release(trace)
        self._traces.clear()

    # for tests and benchmarks: the logits themselves (never traced)
    def prefill_logits(self, token_ids, start_pos: int, page_table) -> np.ndarray:
        return self.model.logits_to_host(self.model.prefill_forward(token_ids, start_pos, page_table))

    def decode_logits(self, token_ids, positions, page_tables) -> np.ndarray:
        n = len(token_ids)
        slots = self._write_decode(DecodeInput(list(token_ids), list(positions), [list(t) for t in page_tables], [SamplingSpec()] * n))
        return self.model.logits_to_host(self.model.decode_step(self.inputs))[slots]
