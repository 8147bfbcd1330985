"""The model's steps that return log-probabilities as well as tokens (``ttdist.mesh.logprobs``).

A separate path beside ``LlamaModel``'s: a step with no user asking for logprobs runs exactly
the default ops. ``prefill_prompt_logprobs`` runs the LM head over every position of a prefill
chunk and returns only ``[T, 1 + 2k]`` rows (never the chunk's logits); ``rows_to_logprobs``
turns rows read from the mesh into ``TokenLogprob``s cut to each request's N.
"""

from __future__ import annotations

import numpy as np

from ttdist.engine.runner import TokenLogprob
from ttdist.mesh import logprobs
from ttdist.mesh.placement import REPLICATED
from ttdist.mesh.precision import DType
from ttdist.model.llama import LlamaModel


def sample_with_logprobs(model: LlamaModel, logits, params, penalty_params=None, allowed=None, *,
                         processed: bool = False):
    """Token ids and logprob rows ``[B, 1 + 2k]`` (device tensors) drawn from ``logits`` (with
    the penalties' min_p column when ``penalty_params`` is given, each chip's slice masked by the
    grammar words ``allowed`` when given)."""
    return model.be.sample_logprobs(logits, model.config.vocab_size, params, model.vocab_axis, penalty_params, allowed,
                                    processed=processed)


def prefill_prompt_logprobs(model: LlamaModel, token_ids, start_pos: int, page_table, targets) -> tuple[object, np.ndarray]:
    """Fill the cache with one chunk; the vocab-sharded logits of its last token (to sample from)
    and host rows ``[len(targets), 1 + 2k]``: row i scores ``targets[i]`` after position
    ``start_pos + i``."""
    be = model.be
    x, n, padded = model.prefill_rows(token_ids, start_pos, page_table)
    if not 0 < len(targets) <= n:
        raise ValueError(f"prompt logprobs: {len(targets)} targets for a chunk of {n} tokens")
    column = np.zeros((padded, 1), dtype=np.float32)
    column[: len(targets), 0] = targets
    target_t = be.from_host(column, REPLICATED, dtype=DType.float32, name="input.prompt_targets")
    rows_t = be.prompt_logprobs(model.lm_head.forward(x), model.config.vocab_size, target_t, model.vocab_axis)
    rows = be.to_host(rows_t)[: len(targets)]
    for t in (target_t, rows_t):
        be.deallocate(t)
    pick = np.zeros((1, padded), dtype=np.float32)
    pick[0, n - 1] = 1.0
    last = be.linear(be.from_host(pick, REPLICATED, dtype=DType.bfloat16, name="input.last_token"), x)
    return model.lm_head.forward(last), rows


def rows_to_logprobs(rows: np.ndarray, tokens, counts) -> list[TokenLogprob | None]:
    """One ``TokenLogprob`` per row for ``tokens`` with its ``counts[i]`` top entries (None: not asked)."""
    out: list[TokenLogprob | None] = []
    for row, token, count in zip(rows, tokens, counts):
        if count is None:
            out.append(None)
            continue
        logprob, top = logprobs.split(row, count)
        out.append(TokenLogprob(int(token), logprob, tuple(top)))
    return out
