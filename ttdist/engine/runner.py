"""The boundary between the engine (scheduling, pages) and a model on a mesh.

The engine decides which tokens run where in the paged KV cache; the runner only computes.
Everything here is plain Python so the engine never imports torch or ttnn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from ttdist.engine.logprobs import LOGPROBS_MODES, DecodeLogprobs, PrefillLogprobs, TokenLogprob

__all__ = ["DecodeInput", "DecodeLogprobs", "LOGPROBS_MODES", "ModelRunner", "PrefillInput", "PenaltySpec", "PrefillLogprobs", "RunnerInfo",
           "SamplingSpec", "TokenLogprob"]


@dataclass(frozen=True)
class PenaltySpec:
    """One request's penalties and biases (``ttdist.mesh.penalties``), fixed for its life.

    ``repetition_penalty`` (Hugging Face: over prompt and output tokens, 1 = off),
    ``presence_penalty`` / ``frequency_penalty`` (OpenAI: over output tokens, 0 = off),
    ``logit_bias`` (token id, bias) pairs, ``min_p`` (0 = off); ``banned_ids`` (EOS and stop ids)
    cannot be drawn while fewer than ``min_tokens`` tokens are generated.
    """

    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_p: float = 0.0
    min_tokens: int = 0
    banned_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class SamplingSpec:
    """How to pick one user's next token. temperature 0 = greedy; top_k 0 / top_p 0 or 1 = off.

    With ``penalties``, ``history`` is the user's prompt followed by every token generated so far
    (a view of the engine's list, read when the runner seeds its token counts) and
    ``num_prompt_tokens`` says where the prompt ends in it."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    step: int = 0  # index of the token being drawn, mixed into the seed
    logprobs: int | None = None  # the drawn token's logprob and the top N come back too (None: not asked)
    penalties: PenaltySpec | None = None
    history: Sequence[int] = ()
    num_prompt_tokens: int = 0
    # the tokens the user's grammar allows next: ceil(vocab / 32) int32 words, bit t % 32 of word
    # t // 32 set when token t may follow (numpy); None = every token
    allowed: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class PrefillInput:
    """One user's prompt chunk at ``start_pos`` (a multiple of the page size).

    ``page_table`` lists the user's pages for the whole sequence so far, in order; the
    chunk's K/V are written through it. When ``sample`` is set the runner returns the
    next token drawn from the chunk's last position.
    """

    token_ids: list[int]
    start_pos: int
    page_table: list[int]
    sample: bool
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    # prompt logprobs: the next token of positions start_pos, start_pos + 1, ... (``prefill_logprobs``)
    prompt_targets: tuple[int, ...] = ()
    prompt_logprobs: int = 0   # top N per prompt position


@dataclass(frozen=True)
class DecodeInput:
    """One token per active user, each at its own position (the token's index).

    The engine computes a prompt's last token with decode whenever it is the only one left
    (a 1-token prompt, or a chunked or prefix-cached prompt one token short), so a position
    may be 0 and a user's first generated token may come from decode rather than prefill.
    """

    token_ids: list[int]
    positions: list[int]
    page_tables: list[list[int]]
    sampling: list[SamplingSpec]
    seq_ids: list[str] = field(default_factory=list)  # who each user is, so a runner keeps its slot stable


@dataclass(frozen=True)
class RunnerInfo:
    """What the engine needs to know about the model and its KV cache.

    ``user_groups``: the users are split into this many groups, each group's chips holding KV only
    for its own users (a Galaxy's column groups); ``num_pages`` is the total, group g owns page ids
    [g * P, (g + 1) * P) with P = num_pages // user_groups, and at most max_batch // user_groups of
    its users run at once. The runner tells a user's group from its page ids.
    """

    vocab_size: int
    max_context: int
    page_size: int
    num_pages: int
    max_batch: int
    eos_token_ids: tuple[int, ...] = ()
    user_groups: int = 1
    logprobs: bool = False   # the runner implements prefill_logprobs and decode_logprobs
    # names the KV the runner stores (weights, layout, KV dtype, page size): pages read from one runner
    # are written only into a runner with the same identity; "" = no read_kv_pages / write_kv_pages
    kv_identity: str = ""


class ModelRunner(Protocol):
    info: RunnerInfo

    def prefill(self, inp: PrefillInput) -> int | None:
        """Run one prompt chunk; the sampled next token when ``inp.sample``, else None."""

    def decode(self, inp: DecodeInput) -> list[int]:
        """Advance every user one token; the sampled next token per user."""

    def prefill_logprobs(self, inp: PrefillInput) -> PrefillLogprobs:
        """``prefill`` that also returns the sampled token's logprob (``inp.sampling.logprobs``) and
        the prompt targets' (only runners whose ``info.logprobs`` is set; the engine asks no other)."""

    def decode_logprobs(self, inp: DecodeInput) -> DecodeLogprobs:
        """``decode`` that also returns the logprobs of the users whose ``sampling.logprobs`` is set."""

    def read_kv_pages(self, page_ids: list[int]) -> list[Any]:
        """Each page's K and V in every layer as the chips store them, one host array per page (only
        runners with ``info.kv_identity``); the array does not depend on the page's user group."""

    def write_kv_pages(self, page_ids: list[int], pages: list[Any]) -> None:
        """Write arrays from ``read_kv_pages`` (of a runner with the same identity) into these pages."""
