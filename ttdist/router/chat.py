"""Chat conversations into prompt token ids, for both public APIs.

The router renders every chat (HTTP ``/v1/chat/completions`` and gRPC ``GenerateRequest.chat``)
with the model's chat template and tokenizes it with ``add_special_tokens=False`` (the template
writes its own special tokens, as with transformers' ``apply_chat_template``), so a chat request
reaches the router core as token ids and routes, caches and migrates like any other.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from ttdist.engine.chat_template import ChatTemplate, ChatTemplateError
from ttdist.runtime.request_checks import RequestError, invalid
from ttdist.v1 import generation_pb2 as pb


class ChatPrompter:
    """``template`` None: chat requests are refused with ``missing`` (why there is no template)."""

    def __init__(self, template: ChatTemplate | None, tokenizer, missing: str = "") -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.missing = missing or "this server has no chat template: start it with --chat-template FILE"

    @classmethod
    def load(cls, model_dir: str | Path | None, tokenizer, override: str | Path | None = None) -> ChatPrompter:
        """The checkpoint's template (or ``override``); a model without one gives a prompter that refuses chats."""
        if not model_dir or tokenizer is None:
            return cls(None, tokenizer, "this server has no tokenizer, so it cannot render chats; use token ids")
        try:
            return cls(ChatTemplate.from_dir(model_dir, override), tokenizer)
        except ChatTemplateError as err:
            if override is not None:
                raise
            return cls(None, tokenizer, str(err))

    def ids(self, messages: list[dict], add_generation_prompt: bool = True, tools: list | None = None) -> list[int]:
        """The prompt ids of a conversation (``tools`` shown to the template); ``RequestError`` (field
        ``messages``) when it cannot be rendered."""
        if self.template is None:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "messages", self.missing)
        try:
            text = self.template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        except ChatTemplateError as err:
            raise invalid("messages", str(err)) from None
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise invalid("messages", "the chat template rendered an empty prompt")
        return ids

    def resolve(self, req: pb.GenerateRequest) -> pb.GenerateRequest:
        """``req`` with a chat input replaced by its token ids (any other request as it is)."""
        if req.WhichOneof("input") != "chat":
            return req
        messages = [{"role": m.role, "content": m.content} for m in req.chat.messages]
        add = req.chat.add_generation_prompt if req.chat.HasField("add_generation_prompt") else True
        out = pb.GenerateRequest()
        out.CopyFrom(req)
        out.token_ids.ids.extend(self.ids(messages, add))
        return out
