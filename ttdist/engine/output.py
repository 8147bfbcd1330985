"""Turns each sampled token into a ``RequestOutput``: stop checks, text deltas, usage, timings.

Stop order for a new token: EOS (unless ``ignore_eos``), then stop token ids (both keep the id
in ``output_ids`` but add no text), then stop strings on the text (the text is cut where the
first stop string starts), then ``max_tokens``. While stop strings are set, the last
``len(longest stop) - 1`` characters are held back from the stream until they cannot start one.
"""

from __future__ import annotations

from ttdist.engine.errors import InvalidRequestError
import collections.abc

from ttdist.engine.request import FinishReason, RequestOutput, Timings, Usage
from ttdist.engine.sequence import Sequence


class OutputIds(collections.abc.Sequence):
    """The ids generated up to one output, read from the sequence without copying them (its
    tokens are only ever appended): a step costs O(1) per request under the engine lock, not
    a copy of everything generated so far. Compares equal to the list of the same ids."""

    __slots__ = ("_ids", "_start", "_end")

    def __init__(self, ids: list[int], start: int, end: int) -> None:
        self._ids, self._start, self._end = ids, start, end

    def __len__(self) -> int:
        return self._end - self._start

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._ids[self._start:self._end][index]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("output id index out of range")
        return self._ids[self._start + index]

    def __iter__(self):
        return iter(self._ids[self._start:self._end])

    def __eq__(self, other) -> bool:
        if isinstance(other, (list, tuple, OutputIds)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


class OutputProcessor:
    def __init__(self, eos_token_ids: tuple[int, ...]) -> None:
        self.eos_token_ids = frozenset(eos_token_ids)

    def append_token(self, seq: Sequence, token: int, now: float) -> RequestOutput:
        """Add ``token`` to ``seq``; sets ``seq.finish_reason`` when generation must stop."""
        seq.token_ids.append(token)
        if seq.first_token_s is None:
            seq.first_token_s = now
        seq.last_token_s = now
        sampling = seq.sampling
        if not sampling.ignore_eos and token in self.eos_token_ids:
            seq.finish_reason = FinishReason.EOS
        elif token in sampling.stop_token_ids:
            seq.finish_reason = FinishReason.STOP
        else:
            before = len(seq.output_text)
            if seq.detokenizer is not None:
                piece = seq.detokenizer.push(token)
                if seq.num_generated >= seq.max_tokens:
                    piece += seq.detokenizer.flush()
                _extend_text(seq, piece)
            if _cut_at_stop(seq, before):
                seq.finish_reason = FinishReason.STOP
                return self._output(seq, [token], now)
            if seq.num_generated >= seq.max_tokens:
                seq.finish_reason = FinishReason.LENGTH
        if seq.finish_reason in (FinishReason.EOS, FinishReason.STOP) and seq.detokenizer is not None:
            _extend_text(seq, seq.detokenizer.flush())
        return self._output(seq, [token], now)

    def resume(self, seq: Sequence, output_ids: list[int], text_emitted: int) -> None:
        """Make ``output_ids`` generated already, as if this engine had produced them: their text
        is rebuilt through the detokenizer (held-back bytes included) and ``text_emitted``
        characters of it count as sent."""
        seq.token_ids.extend(output_ids)
        if seq.detokenizer is not None:
            seq.output_text = "".join(seq.detokenizer.push(token) for token in output_ids)
        if text_emitted > len(seq.output_text):
            raise InvalidRequestError(
                "resume.text_emitted", f"{text_emitted} characters were sent but the generated ids make "
                f"{len(seq.output_text)}"
            )
        seq.num_text_emitted = text_emitted

    def finish(self, seq: Sequence, reason: FinishReason, now: float, error: str | None = None) -> RequestOutput:
        """The last output of a request ended from outside (abort, shutdown, failure)."""
        seq.finish_reason = reason
        out = self._output(seq, [], now)
        out.error = error
        return out

    def _output(self, seq: Sequence, new_ids: list[int], now: float) -> RequestOutput:
        finished = seq.finish_reason is not None
        text = seq.output_text
        end = len(text)
        if not finished and seq.sampling.stop:
            end = max(seq.num_text_emitted, end - (max(map(len, seq.sampling.stop)) - 1))
        delta = text[seq.num_text_emitted:end]
        seq.num_text_emitted = end
        out = RequestOutput(
            request_id=seq.request_id,
            token_ids=new_ids,
            text=delta,
            finished=finished,
            finish_reason=seq.finish_reason,
            output_ids=OutputIds(seq.token_ids, seq.num_prompt_tokens, len(seq.token_ids)),
            output_text=text if finished else "",   # the whole text once, not a copy per token
        )
        if finished:
            out.usage = Usage(seq.num_prompt_tokens, seq.num_generated, seq.num_cached_tokens or 0)
            out.timings = _timings(seq, now)
        return out


def _extend_text(seq: Sequence, piece: str) -> None:
    """Append ``piece`` to ``seq.output_text`` in place: with the attribute's reference dropped
    first, CPython grows the string instead of copying the whole output for every token."""
    if not piece:
        return
    text, seq.output_text = seq.output_text, ""
    text += piece
    seq.output_text = text


def _cut_at_stop(seq: Sequence, before: int) -> bool:
    """Cut ``seq.output_text`` at the earliest stop string that the new text completed."""
    stops = seq.sampling.stop
    if not stops:
        return False
    text = seq.output_text
    start = max(0, before - max(map(len, stops)) + 1)
    found = [i for i in (text.find(stop, start) for stop in stops) if i >= 0]
    if not found:
        return False
    seq.output_text = text[: min(found)]
    return True


def _timings(seq: Sequence, now: float) -> Timings:
    total = now - seq.arrival_s
    queue = (seq.first_scheduled_s - seq.arrival_s) if seq.first_scheduled_s is not None else total
    ttft = (seq.first_token_s - seq.arrival_s) if seq.first_token_s is not None else 0.0
    gaps = seq.num_generated - 1
    inter = (seq.last_token_s - seq.first_token_s) / gaps if gaps > 0 and seq.first_token_s is not None else 0.0
    chunks = tuple((a - seq.arrival_s, b - seq.arrival_s, n) for a, b, n in seq.prefill_chunks or ())
    last = (seq.last_token_s - seq.arrival_s) if seq.last_token_s is not None else 0.0
    restored = (seq.restored_s - seq.arrival_s) if seq.restored_s is not None else 0.0
    return Timings(queue_s=queue, ttft_s=ttft, mean_inter_token_s=inter, total_s=total, prefill_chunks=chunks,
                   last_token_s=last, restored_s=restored)
