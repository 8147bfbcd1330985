"""A ``ServingEngine`` (with ``AsyncEngine``'s own surface too) whose "model" is a fixed token rule.

Used where the serving stack is under test rather than the model: router and migration
tests, the router-capacity and scale-out benchmarks. Each step does what the real engine's
scheduler does in shape (prefill one waiting request into a free batch slot, else decode
every running request by one token) and costs a fixed, configurable time: ``step_s`` per
decode step and ``prefill_s_per_token`` per uncached prompt token (0 = zero compute).

The next token depends only on the sequence so far (``next_token``), so a request resumed
from prompt + generated ids elsewhere continues exactly as it would have, as with greedy
decoding on a real model. Prefix caching is modelled with the engine's real chained page
hashes in an LRU of ``num_pages`` pages.

``config.faults`` (or ``inject``) causes faults for real: a chosen request fails in its
output step, the step loop raises or hangs after N steps, or ``start`` raises.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ttdist.engine.errors import EngineStoppedError, InvalidRequestError, OverloadedError
from ttdist.engine.faults import NO_FAULTS, EngineFaults
from ttdist.engine.page_pool import block_hashes
from ttdist.engine.output import OutputIds
from ttdist.engine.serving import InProcessEngine
from ttdist.engine.stats import EngineLiveness, EngineStats
from ttdist.engine.request import FinishReason, GenerationRequest, RequestOutput, Timings, Usage


@dataclass(frozen=True)
class ScriptedEngineConfig:
    vocab_size: int = 49152
    step_s: float = 0.0
    prefill_s_per_token: float = 0.0
    max_batch: int = 32
    max_waiting: int = 4096
    page_size: int = 32
    num_pages: int = 4096
    max_context: int = 8192
    default_max_tokens: int = 64
    faults: EngineFaults = NO_FAULTS


def next_token(context: list[int], vocab_size: int) -> int:
    """The token after ``context``: a fixed mix of its last two ids and its length."""
    return _mix(list(context[-2:]), len(context), vocab_size)


def _mix(tail: list[int], length: int, vocab_size: int) -> int:
    a = tail[-1]
    b = tail[-2] if len(tail) > 1 else 7
    return (a * 1103515245 + b * 12345 + length * 2654435761) % vocab_size


@dataclass
class _Job:
    request: GenerationRequest
    prompt: list[int]
    max_tokens: int
    arrival: float
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    output: list[int] = field(default_factory=list)
    cached: int = 0
    first_token_at: float = 0.0


class ScriptedEngine(InProcessEngine):
    tokenizer = None   # prompts are bytes: a text prompt is tokenized here, never by the caller

    def __init__(self, config: ScriptedEngineConfig | None = None) -> None:
        self.config = config or ScriptedEngineConfig()
        self._waiting: deque[_Job] = deque()
        self._running: dict[str, _Job] = {}
        self._jobs: dict[str, _Job] = {}
        self._cache: OrderedDict[int, None] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._prompt_total = self._gen_total = self._hit_tokens = 0
        self._finished = self._aborted = self._prefills = self._decodes = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=256)
        self.faults = self.config.faults
        self._progress_s = time.monotonic()
        self._failure = ""

    async def launch(self) -> None:
        self.start()

    async def stop(self) -> None:
        self.shutdown()

    def memory(self) -> None:
        return None   # no mesh

    def start(self) -> None:
        """Start the step loop, a task of the running event loop."""
        self.faults.on_start()
        if self._task is None:
            self._progress_s = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def inject(self, faults: EngineFaults) -> None:
        """Cause ``faults`` from now on (tests)."""
        self.faults = faults

    def liveness(self) -> EngineLiveness:
        alive = self._task is not None and not self._task.done()
        return EngineLiveness(
            alive=alive, has_work=bool(self._waiting or self._running),
            last_step_age_s=time.monotonic() - self._progress_s, steps_total=self._prefills + self._decodes,
            error="" if alive else (self._failure or "the step loop is not running"),
        )

    def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for rid in list(self._jobs):
            self.abort(rid)

    def submit(self, request: GenerationRequest) -> _Job:
        cfg = self.config
        if self._task is None:
            raise EngineStoppedError(f"the scripted engine is not running ({self._failure or 'not started'})")
        if request.request_id in self._jobs:
            raise InvalidRequestError("request_id", f"{request.request_id!r} is already running")
        prompt = request.prompt_token_ids
        if prompt is None:
            prompt = [b % cfg.vocab_size for b in (request.prompt or "").encode()]
        if not prompt:
            raise InvalidRequestError("input", "the prompt is empty")
        if len(self._waiting) >= cfg.max_waiting:
            raise OverloadedError(f"{len(self._waiting)} requests are waiting")
        max_tokens = request.sampling.max_tokens or cfg.default_max_tokens
        max_tokens = min(max_tokens, cfg.max_context - len(prompt))
        job = _Job(request, list(prompt), max_tokens, time.perf_counter())
        if request.resume is not None:   # moved here from another replica: continue after its ids
            job.output = list(request.resume.output_ids)
            if len(job.output) >= max_tokens:
                raise InvalidRequestError("resume.output_ids", f"{len(job.output)} ids already reach max_tokens={max_tokens}")
        self._jobs[request.request_id] = job
        self._waiting.append(job)
        self._wakeup.set()
        return job

    async def generate(self, request: GenerationRequest):
        job = self.submit(request)
        try:
            while True:
                outs = [await job.queue.get()]
                while not job.queue.empty():   # as the real engine: a reader behind takes all waiting at once
                    outs.append(job.queue.get_nowait())
                out = RequestOutput.merge(outs)
                yield out
                if out.finished:
                    return
        finally:
            self.abort(request.request_id)

    def abort(self, request_id: str) -> bool:
        job = self._jobs.get(request_id)
        if job is None:
            return False
        self._finish(job, FinishReason.ABORT, [])
        return True

    def stats(self) -> EngineStats:
        now = time.perf_counter()
        recent = [n for t, n in self._recent if now - t < 2.0]
        cfg = self.config
        return EngineStats(
            running=len(self._running), waiting=len(self._waiting),
            free_pages=cfg.num_pages - len(self._cache), total_pages=cfg.num_pages, cached_pages=len(self._cache),
            page_size=cfg.page_size, max_batch=cfg.max_batch,
            prefix_hit_rate=self._hit_tokens / self._prompt_total if self._prompt_total else 0.0,
            tokens_per_second=sum(recent) / 2.0, prompt_tokens_total=self._prompt_total,
            generation_tokens_total=self._gen_total, cached_tokens_total=self._hit_tokens,
            requests_finished_total=self._finished, requests_aborted_total=self._aborted,
            preemptions_total=0, prefill_steps_total=self._prefills, decode_steps_total=self._decodes,
        )

    def prefix_hashes(self) -> list[int]:
        return list(self._cache)

    def tier_hashes(self) -> list[int]:
        return []   # no KV tiers

    async def _loop(self) -> None:
        try:
            await self._steps()
        except Exception as exc:  # noqa: BLE001 - the engine failed: end every request, refuse new ones
            self._failure = f"engine failed: {type(exc).__name__}: {exc}"
            self._task = None
            for job in list(self._jobs.values()):
                self._finish(job, FinishReason.ABORT, [], error=self._failure)

    async def _steps(self) -> None:
        cfg = self.config
        while True:
            if not self._waiting and not self._running:
                self._wakeup.clear()
                await self._wakeup.wait()
            self._progress_s = time.monotonic()
            stall_s = self.faults.before_step(self._prefills + self._decodes)
            if stall_s:
                await asyncio.sleep(stall_s)
            started = time.perf_counter()
            if self._waiting and len(self._running) < cfg.max_batch:
                job = self._waiting.popleft()
                self._prefills += 1
                cost = self._prefill(job) * cfg.prefill_s_per_token
                await asyncio.sleep(max(0.0, cost - (time.perf_counter() - started)))
                if job.request.request_id in self._jobs:
                    self._running[job.request.request_id] = job
                    self._emit([job])
                continue
            await asyncio.sleep(max(0.0, cfg.step_s - (time.perf_counter() - started)))
            self._decodes += 1
            self._emit(list(self._running.values()))

    def _prefill(self, job: _Job) -> int:
        hashes = block_hashes(job.prompt, self.config.page_size)
        hits = 0
        for h in hashes:
            if h not in self._cache:
                break
            hits += 1
        for h in hashes:
            self._cache[h] = None
            self._cache.move_to_end(h)
        while len(self._cache) > self.config.num_pages:
            self._cache.popitem(last=False)
        job.cached = hits * self.config.page_size
        self._prompt_total += len(job.prompt)
        self._hit_tokens += job.cached
        return len(job.prompt) - job.cached

    def _emit(self, jobs: list[_Job]) -> None:
        now = time.perf_counter()
        self._recent.append((now, len(jobs)))
        for job in jobs:
            try:
                self.faults.check_request(job.request.request_id)
            except Exception as exc:  # noqa: BLE001 - this request alone fails; the batch goes on
                self._finish(job, FinishReason.ABORT, [], request_error=f"{type(exc).__name__}: {exc}")
                continue
            tail = (job.prompt[-2:] + job.output[-2:])[-2:]   # the rule reads only these and the length
            token = _mix(tail, len(job.prompt) + len(job.output), self.config.vocab_size)
            job.output.append(token)
            self._gen_total += 1
            if not job.first_token_at:
                job.first_token_at = now
            stop = job.request.sampling.stop_token_ids
            if token in stop:
                self._finish(job, FinishReason.STOP, [token])
            elif len(job.output) >= job.max_tokens:
                self._finish(job, FinishReason.LENGTH, [token])
            else:
                job.queue.put_nowait(RequestOutput(
                    job.request.request_id, [token], _text([token]), False,
                    output_ids=OutputIds(job.output, 0, len(job.output)),   # as the engine: a view, no text so far
                ))

    def _finish(self, job: _Job, reason: FinishReason, new: list[int], *, error: str | None = None,
                request_error: str | None = None) -> None:
        rid = job.request.request_id
        self._jobs.pop(rid, None)
        if reason is FinishReason.ABORT:
            self._aborted += 1
        else:
            self._finished += 1
        self._running.pop(rid, None)
        if job in self._waiting:
            self._waiting.remove(job)
        now = time.perf_counter()
        n = len(job.output)
        ttft = (job.first_token_at or now) - job.arrival
        itl = (now - job.first_token_at) / (n - 1) if n > 1 and job.first_token_at else 0.0
        job.queue.put_nowait(RequestOutput(
            rid, new, _text(new), True, finish_reason=reason,
            usage=Usage(len(job.prompt), n, job.cached),
            timings=Timings(queue_s=ttft, ttft_s=ttft, mean_inter_token_s=itl, total_s=now - job.arrival),
            output_ids=list(job.output), output_text=_text(job.output), error=error, request_error=request_error,
        ))


def _text(ids: list[int]) -> str:
    return "".join(f" t{i}" for i in ids)
