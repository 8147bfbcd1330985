"""What a caller sends the engine (a request with sampling params) and what it gets back.

Every ``RequestOutput`` carries the ids and text new in this step and every id generated so far
(a view, not a copy); the last one of a request has ``finished`` set, a ``finish_reason``,
``usage``, ``timings`` and the whole text in ``output_text`` (empty before: copying the text so
far into every output would cost the whole output per token).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ttdist.engine.grammar.spec import StructuredOutput


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 = greedy; top_k 0 and top_p 1 = off.

    ``max_tokens`` None means the engine's default (clipped to the context left). Stop strings
    are matched on the generated text and cut from it; stop token ids and EOS end generation
    (their token is kept in ``output_ids``, not in the text).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None          # per generated token: its logprob and the top N (``engine.logprobs``)
    prompt_logprobs: int | None = None   # per prompt token (after the first): its logprob and the top N
    # penalties and biases (``ttdist.engine.penalties``): neutral by default
    repetition_penalty: float = 1.0     # Hugging Face: over prompt + output tokens; > 0, 1 = off
    presence_penalty: float = 0.0       # OpenAI: over output tokens, in [-2, 2]
    frequency_penalty: float = 0.0      # OpenAI: over output tokens, in [-2, 2]
    logit_bias: dict[int, float] = field(default_factory=dict)   # token id -> bias in [-100, 100]
    min_p: float = 0.0                  # in [0, 1]; 0 = off
    min_tokens: int = 0                 # EOS and stop token ids cannot end the output before this many
    structured_output: StructuredOutput | None = None   # the grammar the output follows (None: free text)
    bad_words: list[str] = field(default_factory=list)  # vLLM's: words the output may not contain (``engine.bad_words``)


@dataclass(frozen=True)
class Resume:
    """A generation continued here (moved from another replica): ``output_ids`` were generated
    already and count toward ``max_tokens``; ``text_emitted`` characters of their text were
    delivered, so the rest (held-back bytes of a character, a possible stop-string start) is
    sent as if nothing had moved. Seeded sampling continues the same random stream."""

    output_ids: list[int]
    text_emitted: int = 0


@dataclass
class GenerationRequest:
    """One generation: exactly one of ``prompt`` (text) or ``prompt_token_ids``."""

    request_id: str
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    resume: Resume | None = None
    traced: bool = False        # record its prefill chunks for its trace (``Timings.prefill_chunks``)


class FinishReason(enum.Enum):
    STOP = "stop"        # a stop string or stop token id
    LENGTH = "length"    # max_tokens or the context window
    EOS = "eos"          # the model's end-of-sequence token
    ABORT = "abort"      # aborted by the caller, or the engine stopped


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int   # prompt tokens served from the prefix cache


@dataclass(frozen=True)
class Timings:
    """Seconds: queue (arrival to first scheduled), TTFT (arrival to first token), total; and,
    for a traced request, each prefill chunk as (start, end, tokens), seconds from arrival."""

    queue_s: float
    ttft_s: float
    mean_inter_token_s: float
    total_s: float
    prefill_chunks: tuple[tuple[float, float, int], ...] = ()
    last_token_s: float = 0.0     # arrival to the last token (0: none)
    restored_s: float = 0.0       # arrival to its prefix pages restored from a KV tier written (0: none restored)


@dataclass
class RequestOutput:
    """One step of one request: new ids and text, plus all generated so far."""

    request_id: str
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    output_ids: list[int] = field(default_factory=list)
    output_text: str = ""      # the whole text, on the finished output only
    error: str | None = None   # set when the engine itself failed (the request ends with ABORT)
    request_error: str | None = None   # set when this request alone failed in the engine (ABORT; others go on)
    logprobs: list | None = None          # one ``TokenLogprob`` per id in ``token_ids`` (when asked)
    prompt_logprobs: list | None = None   # on the first output: None, then one ``TokenLogprob`` per prompt token

    @staticmethod
    def merge(outputs: "list[RequestOutput]") -> "RequestOutput":
        """Consecutive outputs of one request as one: their new ids and text joined, the rest
        (totals, finish, usage, errors) from the last. A reader that fell behind takes every
        output waiting for it at once, so a slow stream costs one message per read, not per token."""
        if len(outputs) == 1:
            return outputs[0]
        last = outputs[-1]
        logprobs = [lp for o in outputs for lp in o.logprobs] if any(o.logprobs for o in outputs) else None
        return RequestOutput(
            last.request_id, [t for o in outputs for t in o.token_ids], "".join(o.text for o in outputs),
            last.finished, last.finish_reason, last.usage, last.timings, last.output_ids, last.output_text,
            last.error, last.request_error, logprobs,
            next((o.prompt_logprobs for o in outputs if o.prompt_logprobs is not None), None),
        )
