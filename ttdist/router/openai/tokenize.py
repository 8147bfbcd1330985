"""vLLM's tokenizer endpoints, served beside the OpenAI API (lm-evaluation-harness' remote
tokenizer probes ``/tokenizer_info`` and ``/tokenize``):

    POST /tokenize         {"prompt": str, "add_special_tokens": bool = true} or {"messages": [...],
                           "add_generation_prompt": bool = true}
                           -> {"count", "max_model_len", "tokens", "token_strs": null}
    POST /detokenize       {"tokens": [ids]} -> {"prompt": str}
    GET  /tokenizer_info   {"tokenizer_class", "eos_token", "bos_token", "pad_token", "chat_template",
                            "model_max_length"}

The model is the request's ``model`` (a JSON field, or ``?model=`` for ``/tokenizer_info``; the
default model when absent). A server without a tokenizer answers 400 naming the field; ids
outside the vocabulary are a 400; an unknown model a 404.
"""

from __future__ import annotations

import json

from aiohttp import web

from ttdist.router.models import ModelRoute, ModelRouters
from ttdist.router.openai.errors import ApiError, bad_param, from_request_error
from ttdist.runtime.request_checks import RequestError

NO_TOKENIZER = "this server has no tokenizer (the checkpoint has no tokenizer.json)"


class TokenizeRoutes:
    def __init__(self, models: ModelRouters) -> None:
        self.models = models

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.router.add_get("/tokenizer_info", self.tokenizer_info)

    def _route(self, name) -> ModelRoute:
        if not isinstance(name, str):
            raise bad_param("model", "must be a string")
        try:
            return self.models.route(name)
        except RequestError as err:
            raise from_request_error(err) from None

    @staticmethod
    def _tokenizer(route: ModelRoute, field: str):
        if route.router.tokenizer is None:
            raise bad_param(field, NO_TOKENIZER)
        return route.router.tokenizer

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await _json(request)
        route = self._route(body.get("model") or "")
        card = route.card
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise bad_param("messages", "must be a non-empty array of {role, content}")
            add = body.get("add_generation_prompt", True)
            try:
                ids = route.chat.ids(messages, bool(add))
            except RequestError as err:
                raise bad_param(err.field or "messages", str(err)) from None
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise bad_param("prompt", "must be a string (or send messages)")
            add = body.get("add_special_tokens", True)
            if not isinstance(add, bool):
                raise bad_param("add_special_tokens", "must be a boolean")
            ids = self._tokenizer(route, "prompt").encode(prompt, add_special_tokens=add) if prompt else []
        return web.json_response({"count": len(ids), "max_model_len": card.max_context, "tokens": ids, "token_strs": None})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await _json(request)
        tokens = body.get("tokens")
        route = self._route(body.get("model") or "")
        vocab = route.card.vocab_size
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise bad_param("tokens", "must be an array of token ids")
        bad = next((t for t in tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_param("tokens", f"token id {bad} is outside the vocabulary [0, {vocab})")
        return web.json_response({"prompt": self._tokenizer(route, "tokens").decode(tokens)})

    async def tokenizer_info(self, request: web.Request) -> web.Response:
        route = self._route(request.query.get("model", ""))
        tokenizer = self._tokenizer(route, "tokenizer")
        eos = tokenizer.eos_token_ids
        template = route.chat.template
        specials = dict(template.special_tokens) if template is not None else {}
        return web.json_response({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": specials.get("eos_token") or (tokenizer.decode([eos[0]], skip_special_tokens=False) if eos else None),
            "bos_token": specials.get("bos_token"), "pad_token": specials.get("pad_token"),
            "chat_template": template.source if template is not None else None,
            "model_max_length": route.card.max_context,
        })

async def _json(request: web.Request) -> dict:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    return body
