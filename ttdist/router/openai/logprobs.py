"""Logprobs in the OpenAI API's shapes, from the ``TokenLogprob`` messages replicas return.

- ``/v1/completions`` (``logprobs: N``): ``{"tokens", "token_logprobs", "top_logprobs",
  "text_offset"}``; each ``top_logprobs`` entry maps token text to logprob for the N best and the
  token itself (as vLLM does). With ``echo`` the prompt's tokens come first, the first of them
  with ``null`` logprob and top logprobs.
- ``/v1/chat/completions`` (``logprobs: true``, ``top_logprobs: N``): ``{"content": [{"token",
  "logprob", "bytes", "top_logprobs": [...]}]}``.
- vLLM's ``prompt_logprobs: N``: one entry per prompt token, ``null`` for the first, else a map
  from token id to ``{"logprob", "rank", "decoded_token"}`` for the prompt token and the N best
  (``rank`` among those N, 1-based; ``null`` for a prompt token outside them).

A token's text is its id decoded alone with special tokens kept.
"""

from __future__ import annotations

from ttdist.v1 import generation_pb2 as pb


class TokenTexts:
    """Token ids to text (cached), through the router's tokenizer (None: ``token_id:N``)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = (self.tokenizer.decode([token_id], skip_special_tokens=False) if self.tokenizer is not None
                    else f"token_id:{token_id}")
            self._cache[token_id] = text
        return text


def completion_logprobs(entries: list[pb.TokenLogprob], texts: TokenTexts, *, first_prompt_id: int | None = None,
                        offset: int = 0) -> dict:
    """The completions ``logprobs`` object for ``entries`` (after the echoed first prompt token,
    when ``first_prompt_id`` is given); ``text_offset`` counts from ``offset``."""
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    if first_prompt_id is not None:
        _add(out, texts(first_prompt_id), None, None, offset)
        offset += len(texts(first_prompt_id))
    for e in entries:
        token = texts(e.token_id)
        top = {texts(t.token_id): t.logprob for t in e.top}
        top.setdefault(token, e.logprob)
        _add(out, token, e.logprob, top, offset)
        offset += len(token)
    return out


def _add(out: dict, token: str, logprob, top, offset: int) -> None:
    out["tokens"].append(token)
    out["token_logprobs"].append(logprob)
    out["top_logprobs"].append(top)
    out["text_offset"].append(offset)


def join_completion(a: dict | None, b: dict) -> dict:
    """Two completions ``logprobs`` objects of one choice, one after the other."""
    if a is None:
        return b
    return {key: a[key] + b[key] for key in a}


def chat_logprobs(entries: list[pb.TokenLogprob], texts: TokenTexts) -> dict:
    """The chat ``logprobs`` object for ``entries``."""
    def item(token_id: int, logprob: float) -> dict:
        token = texts(token_id)
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t.token_id, t.logprob) for t in e.top]}
                        for e in entries]}


def prompt_logprobs_list(entries: list[pb.TokenLogprob], texts: TokenTexts) -> list:
    """vLLM's ``prompt_logprobs``: ``None`` for the first prompt token, then one map per token."""
    out: list = [None]
    for e in entries:
        ranks = {t.token_id: (rank, t.logprob) for rank, t in enumerate(e.top, 1)}
        position = {str(t): {"logprob": lp, "rank": rank, "decoded_token": texts(t)} for t, (rank, lp) in ranks.items()}
        position.setdefault(str(e.token_id), {"logprob": e.logprob, "rank": ranks.get(e.token_id, (None,))[0],
                                              "decoded_token": texts(e.token_id)})
        out.append(position)
    return out


class ChoiceLogprobs:
    """Fills the choices of one OpenAI request with its logprobs (and the echoed prompt): ``req``
    is the parsed request, ``prompts`` its prompts (text or ids, one per ``n`` choices)."""

    def __init__(self, req, prompts: tuple, tokenizer) -> None:
        self.req = req
        self.prompts = prompts
        self.texts = TokenTexts(tokenizer)
        self.tokenizer = tokenizer
        self._offsets: dict[int, int] = {}   # streamed characters per choice (completions' text_offset)

    @property
    def active(self) -> bool:
        s = self.req.sampling
        return self.req.echo or s.logprobs is not None or s.prompt_logprobs is not None

    def final(self, choice: dict, index: int, complete: pb.Complete) -> None:
        """``choice`` (a whole answer) with the echoed prompt and logprobs of ``complete``."""
        self._fill(choice, index, list(complete.logprobs), list(complete.prompt_logprobs), complete.text, first=True)

    def chunk(self, choice: dict, index: int, chunk: pb.Chunk, first: bool) -> None:
        """``choice`` (a streamed delta) with the logprobs of ``chunk``; the first one echoes the prompt."""
        text = choice["delta"].get("content", "") if self.req.kind == "chat" else choice["text"]
        self._fill(choice, index, list(chunk.logprobs), list(chunk.prompt_logprobs), text, first)

    def _fill(self, choice: dict, index: int, logprobs: list, prompt: list, text: str, first: bool) -> None:
        s = self.req.sampling
        if self.req.kind == "chat":
            if s.logprobs is not None:
                choice["logprobs"] = chat_logprobs(logprobs, self.texts)
            if prompt:
                choice["prompt_logprobs"] = prompt_logprobs_list(prompt, self.texts)
            return
        echo = self._prompt_text(index) if self.req.echo and first else ""
        offset = self._offsets.get(index, 0)
        if s.logprobs is not None:
            generated = completion_logprobs(logprobs, self.texts, offset=offset + len(echo))
            if echo:
                generated = join_completion(completion_logprobs(prompt, self.texts, first_prompt_id=self._first_id(index),
                                                                offset=offset), generated)
            choice["logprobs"] = generated
        if prompt and s.prompt_logprobs is not None:
            choice["prompt_logprobs"] = prompt_logprobs_list(prompt, self.texts)
        choice["text"] = echo + text
        self._offsets[index] = offset + len(choice["text"])

    def _prompt(self, index: int):
        return self.prompts[index // self.req.n]

    def _prompt_text(self, index: int) -> str:
        prompt = self._prompt(index)
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.decode(list(prompt), skip_special_tokens=False) if self.tokenizer is not None else ""

    def _first_id(self, index: int) -> int | None:
        prompt = self._prompt(index)
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt) if self.tokenizer is not None else []
            return ids[0] if ids else None
        return prompt[0]
