"""The synchronous engine: queue requests, run one step, turn sampled tokens into outputs.

``step()`` is schedule -> run the model -> postprocess. It is thread-safe: the model runs
outside the lock, so ``add_request`` and ``abort`` from other threads never wait on the model.
A request aborted while its step is on the model has its pages freed at once; the step's token
for it is dropped. Each request may carry a ``sink`` that receives its outputs in order.

A failure that belongs to one request (building its sampling spec, detokenizing, stop checks)
ends that request alone, with ``request_error`` naming the cause; the batch goes on. Only a
failure of the model step itself (the runner raising) escapes ``step()``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Callable

import numpy as np

from ttdist.engine.config import EngineConfig
from ttdist.engine.errors import InvalidRequestError
from ttdist.engine.logprobs import DecodeLogprobs, PrefillLogprobs, TokenLogprob
from ttdist.engine.bad_words import all_allowed, ban, bad_word_ids, banned_next
from ttdist.engine.grammar import GrammarState, StructuredOutput, grammar_compiler
from ttdist.engine.grammar.compiler import FIELD as GRAMMAR_FIELD
from ttdist.engine.kv_tiers import KvTiers, KvTierStats
from ttdist.engine.output import OutputProcessor
from ttdist.engine.page_groups import GroupedPagePool
from ttdist.engine.penalties import penalty_spec
from ttdist.engine.request import FinishReason, GenerationRequest, RequestOutput
from ttdist.engine.runner import DecodeInput, ModelRunner, PrefillInput, SamplingSpec
from ttdist.engine.scheduler import DecodeStep, PrefillStep, Scheduler, SchedulerConfig
from ttdist.engine.sequence import Sequence
from ttdist.engine.stats import EngineMetrics, EngineStats
from ttdist.engine.tokenizer import Tokenizer
from ttdist.engine.validation import Limits, validate_request

Sink = Callable[[RequestOutput], None]
SEED_MODULUS = 2**63   # seeds are reduced into int64's range: the full uint64 seed range works


class EngineCore:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Tokenizer | None,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        kv_executor=None,
    ) -> None:
        self.config = config = config or EngineConfig()
        info = runner.info
        config.check(info)
        self.runner = runner
        self.tokenizer = tokenizer
        self.clock = clock
        self.max_batch = min(config.max_batch, info.max_batch)
        self.pool = GroupedPagePool(info.num_pages, info.page_size, info.user_groups, config.prefix_caching)
        # KV tiers need a runner that reads and writes pages; without one they stay off
        self.tiers = (KvTiers(config.kv_tiers, info.kv_identity, info.page_size, kv_executor, clock)
                      if config.kv_tiers.enabled and config.prefix_caching and info.kv_identity else None)
        if self.tiers is not None:
            self.pool.record_evictions()
        self.scheduler = Scheduler(
            self.pool,
            SchedulerConfig(
                self.max_batch, config.max_waiting, config.prefill_chunk,
                slots_per_group=info.max_batch // info.user_groups,
            ),
            clock,
            self.tiers,
        )
        self.limits = Limits(
            vocab_size=info.vocab_size,
            context_window=min(info.max_context, self.pool.pages_per_group * info.page_size),
            default_max_tokens=config.default_max_tokens,
            logprobs=info.logprobs,
        )
        eos = tuple(info.eos_token_ids) + (tokenizer.eos_token_ids if tokenizer else ())
        self.eos_token_ids = tuple(dict.fromkeys(eos))
        self.outputs = OutputProcessor(self.eos_token_ids)
        self.metrics = EngineMetrics(config.stats_window_s, config.latency_samples)
        self.faults = config.faults
        self._active: dict[str, Sequence] = {}
        self._sinks: dict[int, Sink] = {}
        self._lock = threading.RLock()

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, request: GenerationRequest, sink: Sink | None = None, arrival_s: float | None = None) -> Sequence:
        """Validate and queue ``request``; raises InvalidRequestError or OverloadedError.

        ``arrival_s`` (on ``clock``): when the request reached the engine, if that was before this
        call (an engine process takes a request sent during a step once the step ends); its
        queue time and TTFT count from there. A structured output's grammar is compiled before the
        engine lock is taken (a cache hit when the caller checked it off its event loop first)."""
        grammar = self._start_grammar(request)
        with self._lock:
            if isinstance(getattr(request, "request_id", None), str) and request.request_id in self._active:
                raise InvalidRequestError("request_id", f"{request.request_id!r} is already in flight")
            checked = validate_request(request, self.limits, self.tokenizer)
            seq = Sequence(
                request_id=request.request_id,
                token_ids=list(checked.prompt_ids),
                sampling=request.sampling,
                max_tokens=checked.max_tokens,
                arrival_s=self.clock() if arrival_s is None else arrival_s,
                detokenizer=self.tokenizer.detokenizer(checked.prompt_ids) if self.tokenizer else None,
                penalties=penalty_spec(request.sampling, self.eos_token_ids),
                grammar=grammar,
                prefill_chunks=[] if request.traced else None,
                bad_words=bad_word_ids(request.sampling.bad_words, self.tokenizer, self.runner.info.vocab_size),
            )
            if checked.resumed_ids:
                self.outputs.resume(seq, checked.resumed_ids, request.resume.text_emitted)
                _replay_grammar(grammar, checked.resumed_ids)
            self.scheduler.add(seq)
            self._active[seq.request_id] = seq
            if sink is not None:
                self._sinks[id(seq)] = sink
            return seq

    def _start_grammar(self, request: GenerationRequest) -> GrammarState | None:
        spec = getattr(getattr(request, "sampling", None), "structured_output", None)
        if spec is None:
            return None
        if not isinstance(spec, StructuredOutput):
            raise InvalidRequestError(GRAMMAR_FIELD, f"expected a StructuredOutput, got {type(spec).__name__}")
        if self.tokenizer is None:
            raise InvalidRequestError(GRAMMAR_FIELD, "structured outputs need a tokenizer, and this engine has none")
        return grammar_compiler(self.tokenizer).start(spec)

    def abort(self, request_id: str) -> bool:
        """End a queued or running request now (pages freed); False if it is not in flight."""
        with self._lock:
            seq = self._active.get(request_id)
            if seq is None:
                return False
            self.abort_sequence(seq)
            return True

    def abort_sequence(self, seq: Sequence, error: str | None = None) -> RequestOutput | None:
        with self._lock:
            if seq.is_finished or self._active.get(seq.request_id) is not seq:
                return None
            out = self.outputs.finish(seq, FinishReason.ABORT, self.clock(), error)
            self._retire(seq, out)
            return out

    def abort_all(self, error: str | None = None) -> list[RequestOutput]:
        with self._lock:
            return [out for seq in list(self._active.values()) if (out := self.abort_sequence(seq, error))]

    def has_work(self) -> bool:
        with self._lock:
            return self.scheduler.has_work()

    # -- the step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one prefill chunk or one decode step; the outputs it produced (may be empty)."""
        with self._lock:
            work = self._schedule()
            if self.tiers is not None:
                work = self._move_kv(work)
            if work is None:
                return []
            # built under the lock: an abort may free the pages once the model is running
            failed: list[RequestOutput] = []
            if isinstance(work, PrefillStep):
                inputs = self._isolated(work.seq, failed, self._prefill_input, work)
            else:
                specs = {id(seq): spec for seq in work.seqs if (spec := self._isolated(seq, failed, self._sampling, seq))}
                work = DecodeStep([seq for seq in work.seqs if id(seq) in specs])
                inputs = self._decode_input(work, [specs[id(seq)] for seq in work.seqs]) if work.seqs else None
            if inputs is None:
                return failed
        stall_s = self.faults.before_step(self.metrics.prefill_steps_total + self.metrics.decode_steps_total)
        if stall_s:
            time.sleep(stall_s)
        if isinstance(work, PrefillStep):
            started = self.clock() if work.seq.prefill_chunks is not None else 0.0   # traced requests only
            if inputs.prompt_targets or (inputs.sample and inputs.sampling.logprobs is not None):
                result = self.runner.prefill_logprobs(inputs)
            else:
                result = PrefillLogprobs(self.runner.prefill(inputs))
            with self._lock:
                if work.seq.prefill_chunks is not None:
                    work.seq.prefill_chunks.append((started, self.clock(), work.end - work.start))
                return failed + self._after_prefill(work, result)
        if any(spec.logprobs is not None for spec in inputs.sampling):
            result = self.runner.decode_logprobs(inputs)
        else:
            tokens = self.runner.decode(inputs)
            result = DecodeLogprobs(tokens, [None] * len(tokens))
        if len(result.tokens) != len(work.seqs):
            raise RuntimeError(f"runner returned {len(result.tokens)} tokens for a batch of {len(work.seqs)}")
        with self._lock:
            return failed + self._after_decode(work, result)

    def _schedule(self) -> PrefillStep | DecodeStep | None:
        work = self.scheduler.schedule()
        for seq in self.scheduler.take_admitted():
            self.metrics.on_admitted(seq.num_prompt_tokens, seq.num_cached_tokens or 0)
        return work

    def _move_kv(self, work: PrefillStep | DecodeStep | None) -> PrefillStep | DecodeStep | None:
        """Keep the pages this step's scheduling evicted, then restore the prefilling user's
        prefix from the tiers: its chunk then starts after the restored pages. A restore that
        leaves it one token to compute makes it a decoding user: this step is scheduled again
        (it decodes with the others, or the next request is admitted), no step goes empty."""
        while True:
            evicted = self.pool.take_evicted()
            if evicted:
                self.tiers.offload(evicted, self.runner.read_kv_pages)
            if not isinstance(work, PrefillStep) or work.seq.restore is None:
                return work
            seq = work.seq
            restored = self.tiers.finish_restore(seq, self.runner.write_kv_pages)
            if restored:
                self.pool.cache_full_pages(seq)
                if seq.num_preemptions == 0:
                    seq.num_cached_tokens = (seq.num_cached_tokens or 0) + restored
                    seq.restored_s = self.clock()
                    self.metrics.on_admitted(0, restored)
            if seq.needs_prefill:
                return self.scheduler.chunk(seq)
            work = self._schedule()

    def _prefill_input(self, work: PrefillStep) -> PrefillInput:
        seq = work.seq
        return PrefillInput(
            token_ids=seq.token_ids[work.start:work.end],
            start_pos=work.start,
            page_table=list(seq.page_table),
            sample=work.sample,
            sampling=self._sampling(seq) if work.sample else _spec(seq),
            prompt_targets=tuple(seq.token_ids[work.start + 1:min(work.end + 1, seq.num_prompt_tokens)])
            if seq.recomputes_prefix else (),
            prompt_logprobs=seq.sampling.prompt_logprobs or 0,
        )

    def _sampling(self, seq: Sequence) -> SamplingSpec:
        """How to draw ``seq``'s next token: with the bitmask of the tokens allowed next when its grammar
        or its bad words restrict them."""
        spec = _spec(seq)
        banned = banned_next(seq.bad_words, seq.output_ids) if seq.bad_words else []
        if seq.grammar is None and not banned:
            return spec
        vocab = self.runner.info.vocab_size
        if seq.grammar is None:
            allowed = all_allowed(vocab)
        else:
            allowed = np.empty(-(-vocab // 32), dtype=np.int32)
            seq.grammar.mask_into(allowed, vocab)
        ban(allowed, banned)
        return replace(spec, allowed=allowed)

    def _decode_input(self, work: DecodeStep, specs: list[SamplingSpec]) -> DecodeInput:
        return DecodeInput(
            token_ids=[seq.token_ids[-1] for seq in work.seqs],
            positions=[len(seq) - 1 for seq in work.seqs],
            page_tables=[list(seq.page_table) for seq in work.seqs],
            sampling=specs,
            seq_ids=[seq.request_id for seq in work.seqs],
        )

    def _after_prefill(self, work: PrefillStep, result: PrefillLogprobs) -> list[RequestOutput]:
        seq = work.seq
        self.metrics.on_step(prefill=True, new_tokens=int(work.sample and not seq.is_finished), now=self.clock())
        if seq.is_finished:
            return []
        seq.num_computed = work.end
        if result.prompt:
            seq.prompt_logprobs[work.start:] = result.prompt
        self.pool.cache_full_pages(seq)
        if not work.sample:
            return []
        if result.token is None:
            raise RuntimeError("runner returned no token for a prefill with sample=True")
        return [self._emit(seq, result.token, result.sampled)]

    def _after_decode(self, work: DecodeStep, result: DecodeLogprobs) -> list[RequestOutput]:
        live = [(seq, token, lp) for seq, token, lp in zip(work.seqs, result.tokens, result.logprobs) if not seq.is_finished]
        self.metrics.on_step(prefill=False, new_tokens=len(live), now=self.clock())
        outputs = []
        for seq, token, logprob in live:
            seq.num_computed += 1
            self.pool.cache_full_pages(seq)
            outputs.append(self._emit(seq, token, logprob))
        return outputs

    def _isolated(self, seq: Sequence, failed: list[RequestOutput], build, *args):
        """``build(*args)`` for one request; on an error that request alone ends (added to ``failed``)."""
        try:
            return build(*args)
        except Exception as exc:  # noqa: BLE001 - one request's failure must not end the batch
            failed.append(self._fail_request(seq, exc))
            return None

    def _fail_request(self, seq: Sequence, exc: Exception) -> RequestOutput:
        out = self.outputs.finish(seq, FinishReason.ABORT, self.clock())
        out.request_error = f"{type(exc).__name__}: {exc}"
        self._retire(seq, out)
        return out

    def _emit(self, seq: Sequence, token: int, logprob: TokenLogprob | None = None) -> RequestOutput:
        now = self.clock()
        first = seq.first_token_s is None
        gap = None if first else now - seq.last_token_s
        try:
            self.faults.check_request(seq.request_id)
            if seq.grammar is not None:
                seq.grammar.advance(token)
            out = self.outputs.append_token(seq, token, now)
        except Exception as exc:  # noqa: BLE001 - detokenizing or stop checks failed for this request only
            return self._fail_request(seq, exc)
        if seq.sampling.logprobs is not None:
            out.logprobs = [logprob or TokenLogprob(token, float("nan"))]
        if first and seq.sampling.prompt_logprobs is not None:
            out.prompt_logprobs = [None, *seq.prompt_logprobs[:seq.num_prompt_tokens - 1]]
        self.metrics.on_token(gap, (now - seq.arrival_s) if first else None)
        if out.finished:
            self._retire(seq, out)
        else:
            self._deliver(seq, out)
        return out

    def _retire(self, seq: Sequence, out: RequestOutput) -> None:
        self.scheduler.finish(seq)
        del self._active[seq.request_id]
        self.metrics.on_finished(aborted=out.finish_reason is FinishReason.ABORT)
        self._deliver(seq, out)
        self._sinks.pop(id(seq), None)

    def _deliver(self, seq: Sequence, out: RequestOutput) -> None:
        sink = self._sinks.get(id(seq))
        if sink is not None:
            sink(out)

    # -- introspection ----------------------------------------------------------------------
    def stats(self) -> EngineStats:
        with self._lock:
            m = self.metrics
            return EngineStats(
                running=len(self.scheduler.running),
                waiting=len(self.scheduler.waiting),
                free_pages=self.pool.num_free,
                total_pages=self.pool.num_pages,
                cached_pages=self.pool.num_cached,
                page_size=self.pool.page_size,
                max_batch=self.max_batch,
                prefix_hit_rate=m.prefix_hit_rate(),
                tokens_per_second=m.tokens_per_second(self.clock()),
                prompt_tokens_total=m.prompt_tokens_total,
                generation_tokens_total=m.generation_tokens_total,
                cached_tokens_total=m.cached_tokens_total,
                requests_finished_total=m.requests_finished_total,
                requests_aborted_total=m.requests_aborted_total,
                preemptions_total=self.scheduler.num_preemptions,
                prefill_steps_total=m.prefill_steps_total,
                decode_steps_total=m.decode_steps_total,
                ttft_s=list(m.ttft_s),
                inter_token_s=list(m.inter_token_s),
                user_groups=self.pool.num_groups,
                free_pages_per_group=self.pool.free_per_group(),
                running_per_group=self.scheduler.running_per_group(),
                kv_tiers=self.tiers.stats() if self.tiers is not None else KvTierStats(),
            )

    def prefix_hashes(self) -> list[int]:
        with self._lock:
            return self.pool.prefix_hashes()

    def tier_hashes(self) -> list[int]:
        """Block hashes the KV tiers could restore: host tier and node tier (none without tiers)."""
        return self.tiers.restorable_hashes() if self.tiers is not None else []

    def close(self) -> None:
        """Stop the KV tiers' transfer thread (after its node-tier writes); calling it again is harmless."""
        if self.tiers is not None:
            self.tiers.close()


def _spec(seq: Sequence) -> SamplingSpec:
    s = seq.sampling
    seed = None if s.seed is None else s.seed % SEED_MODULUS
    penalized = {} if seq.penalties is None else {
        "penalties": seq.penalties, "history": seq.token_ids, "num_prompt_tokens": seq.num_prompt_tokens}
    return SamplingSpec(
        temperature=float(s.temperature), top_k=s.top_k, top_p=float(s.top_p), seed=seed, step=seq.num_generated,
        logprobs=s.logprobs, **penalized,
    )


def _replay_grammar(grammar: GrammarState | None, resumed_ids: list[int]) -> None:
    """Bring a moved request's grammar to where its generated ids left it."""
    if grammar is None:
        return
    for token in resumed_ids:
        try:
            grammar.advance(token)
        except ValueError as err:
            raise InvalidRequestError("resume.output_ids", str(err)) from None
