"""The OpenAI-compatible HTTP API of the router (aiohttp, in the router's event loop).

    POST /v1/completions        POST /v1/chat/completions
    GET  /v1/models             GET  /v1/models/{id}             GET /health

Each choice is one ``Router.generate`` call on the router of the model the request names
(``ModelRouters``; an unknown ``model`` is a 404 naming the served ones, ``/v1/models`` lists
them all), so HTTP requests share the gRPC path's routing, migration, limits and deadlines.
Chat messages are rendered with that model's chat template and tokenized here (``ChatPrompter``). Streams are
server-sent events ending in ``data: [DONE]``; a client that goes away cancels its choices,
which aborts them on their replicas and frees their pages at once. Errors use OpenAI's JSON
shape and status codes; an error after the stream has started is sent as a final
``data: {"error": ...}`` event. The listener uses SO_REUSEPORT so several routers on one host
can serve one HTTP port, as they do the gRPC one.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from dataclasses import dataclass, replace

from aiohttp import web

from ttdist.router.chat import ChatPrompter
from ttdist.router.models import ModelRoute, as_models
from ttdist.router.openai import protocol as p
from ttdist.router.openai.errors import ApiError, from_request_error
from ttdist.router.openai.logprobs import ChoiceLogprobs
from ttdist.router.openai.tokenize import TokenizeRoutes
from ttdist.router.openai.tools import might_be_call, parse_calls
from ttdist.runtime.auth import ApiKeys
from ttdist.runtime.request_checks import RequestError
from ttdist.tracing.tracer import take_context
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.v1 import generation_pb2 as pb

MAX_BODY_BYTES = 8 << 20
OPEN_PATHS = ("/health",)


@dataclass
class RunningHttp:
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


class OpenAIServer:
    """Handlers over ``ModelRouters`` (or one ``Router`` whose ``chat`` renders chats; None: chat
    requests are refused)."""

    def __init__(self, router, chat: ChatPrompter | None = None, keys: ApiKeys | None = None) -> None:
        self.models = as_models(router, chat)
        self.keys = keys or ApiKeys()
        self.created = p.now()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model}", self.model)
        app.router.add_get("/health", self.health)
        TokenizeRoutes(self.models).add_to(app)
        return app

    # ------------------------------------------------------------ middleware
    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as err:
            return web.json_response(err.body(), status=err.status)
        except web.HTTPRequestEntityTooLarge:
            err = ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", None, "request_too_large")
            return web.json_response(err.body(), status=413)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            err = ApiError(exc.status, f"{request.method} {request.path}: {exc.reason}", None, None)
            return web.json_response(err.body(), status=exc.status)

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if request.path not in OPEN_PATHS and not self.keys.accepts(request.headers.get("Authorization")):
            given = "Authorization" in request.headers
            raise ApiError(401, "invalid API key" if given else
                           "an API key is required: send 'Authorization: Bearer <key>'", None, "invalid_api_key")
        return await handler(request)

    # ------------------------------------------------------------ handlers
    async def health(self, request: web.Request) -> web.Response:
        ready = sum(v.state == ReplicaState.READY for r in self.models.routes.values() for v in r.router.views())
        serving = self.models.serving      # false while draining, as the gRPC health says
        return web.json_response({"status": "ok" if serving else "unavailable", "ready_replicas": ready},
                                 status=200 if serving else 503)

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response(p.models_object(
            [p.model_object(c.model_id, c.max_context, self.created, c.generation_defaults.as_dict())
             for c in self.models.cards()]))

    async def model(self, request: web.Request) -> web.Response:
        card = self._route(request.match_info["model"]).card
        return web.json_response(p.model_object(card.model_id, card.max_context, self.created,
                                                card.generation_defaults.as_dict()))

    def _route(self, name: str) -> ModelRoute:
        try:
            return self.models.route(name)
        except RequestError as err:
            raise from_request_error(err) from None

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, p.parse_completion(await _body(request)), "cmpl-")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, p.parse_chat(await _body(request)), "chatcmpl-")

    # ------------------------------------------------------------ serving
    def _requests(self, route: ModelRoute, req: p.ParsedRequest, rid: str) -> list[pb.GenerateRequest]:
        prompts = req.prompts if req.kind == "completion" else (self._chat_prompt(route, req),)
        model_temperature = route.card.generation_defaults.temperature
        temperature = p.DEFAULT_TEMPERATURE if model_temperature is None else model_temperature
        out = []
        for k, prompt in enumerate(prompts):
            for i in range(req.n):
                index = k * req.n + i
                g = pb.GenerateRequest(request_id=f"{rid}-{index}", sampling=req.sampling.to_proto(i, temperature),
                                       stream=req.stream, model=route.card.model_id)
                if isinstance(prompt, str):
                    g.text = prompt
                else:
                    g.token_ids.ids.extend(prompt)
                out.append(g)
        return out

    def _chat_prompt(self, route: ModelRoute, req: p.ParsedRequest) -> tuple[int, ...]:
        try:
            return tuple(route.chat.ids(list(req.messages), req.add_generation_prompt,
                                                req.tool_use.template_tools()))
        except RequestError as err:
            raise from_request_error(err) from None

    async def _serve(self, request: web.Request, req: p.ParsedRequest, prefix: str) -> web.StreamResponse:
        route = self._route(req.model)
        req = replace(req, model=route.card.model_id)
        rid = prefix + uuid.uuid4().hex
        created = p.now()
        calls = self._requests(route, req, rid)
        if route.router.tracing is not None:   # W3C trace context from the HTTP headers
            for call in calls:
                take_context(call, request.headers)
        extras = ChoiceLogprobs(req, req.prompts, route.router.tokenizer)
        if req.stream:
            return await self._stream(request, req, rid, created, calls, extras)
        completes = await self._all(calls)
        answer = p.final_object(req, rid, created, completes, _usage(req, completes))
        if extras.active:
            for choice, complete in zip(answer["choices"], completes):
                extras.final(choice, choice["index"], complete)
        return web.json_response(answer)

    async def _all(self, calls: list[pb.GenerateRequest]) -> list[pb.Complete]:
        tasks = [asyncio.ensure_future(self._one(c)) for c in calls]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in tasks:
                if t.done() and t.exception() is not None:
                    raise _api_error(t.exception())
            return [t.result() for t in tasks]
        finally:
            await _cancel(tasks)

    async def _one(self, call: pb.GenerateRequest) -> pb.Complete:
        async for resp in self.models.generate(call, None):
            if resp.WhichOneof("kind") == "complete":
                return resp.complete
        raise ApiError(500, f"{call.request_id} ended without a result")

    async def _stream(self, request, req: p.ParsedRequest, rid: str, created: int, calls,
                      extras: ChoiceLogprobs) -> web.StreamResponse:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, call: pb.GenerateRequest) -> None:
            try:
                async for resp in self.models.generate(call, None):
                    queue.put_nowait((index, resp))
            except Exception as err:  # noqa: BLE001 - every failure reaches the client as an error event
                queue.put_nowait((index, err))

        tasks = [asyncio.ensure_future(pump(i, c)) for i, c in enumerate(calls)]
        try:
            first = await queue.get()
            if isinstance(first[1], Exception):
                raise _api_error(first[1])
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            completes: dict[int, pb.Complete] = {}
            started: set[int] = set()
            held: dict[int, str] = {}   # text that may still be a tool call, per choice
            item = first
            while True:
                index, resp = item
                if isinstance(resp, Exception):
                    await _event(response, _api_error(resp).body())
                    break
                for event in _events(req, rid, created, index, resp, started, extras, held):
                    await _event(response, event)
                if resp.WhichOneof("kind") == "complete":
                    completes[index] = resp.complete
                    if len(completes) == len(calls):
                        if req.include_usage:
                            ordered = [completes[i] for i in range(len(calls))]
                            await _event(response, p.usage_chunk(req, rid, created, _usage(req, ordered)))
                        break
                item = await queue.get()
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            await _cancel(tasks)


def _events(req: p.ParsedRequest, rid: str, created: int, index: int, resp: pb.GenerateResponse, started: set,
            extras: ChoiceLogprobs, held: dict[int, str]):
    """A response's SSE events. With tools, text that may be a tool call is held until it is known:
    then it goes out as ``delta.tool_calls`` (or as content, once it cannot be a call)."""
    out = []
    first = index not in started
    started.add(index)
    if first and req.kind == "chat":
        out.append(p.delta_chunk(req, rid, created, index, "", first=True))
        if req.tool_use.parses_calls:
            held[index] = ""
    if resp.WhichOneof("kind") == "chunk":
        text = resp.chunk.text
        if index in held:
            held[index] += text
            text = "" if might_be_call(held[index]) else held.pop(index)
        if text or (extras.active and (resp.chunk.logprobs or first)):
            event = p.delta_chunk(req, rid, created, index, text)
            if extras.active:
                extras.chunk(event["choices"][0], index, resp.chunk, first)
            out.append(event)
        return out
    buffered = held.pop(index, "")
    calls = parse_calls(buffered) if buffered else None
    if calls:
        return out + p.tool_call_chunks(req, rid, created, index, calls)
    if buffered:
        out.append(p.delta_chunk(req, rid, created, index, buffered))
    out.append(p.delta_chunk(req, rid, created, index, None, finish_reason=resp.complete.finish_reason))
    return out


async def _event(response: web.StreamResponse, obj: dict) -> None:
    await response.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")


async def _cancel(tasks) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _api_error(err: BaseException) -> ApiError:
    if isinstance(err, ApiError):
        return err
    if isinstance(err, RequestError):
        return from_request_error(err)
    return ApiError(500, f"internal error: {err!r}")


def _usage(req: p.ParsedRequest, completes: list[pb.Complete]) -> dict:
    """Prompt tokens count once per prompt (its first choice), completion tokens for every choice."""
    firsts = completes[::req.n]
    return p.usage_object(sum(c.usage.prompt_tokens for c in firsts),
                          sum(c.usage.completion_tokens for c in completes),
                          sum(c.usage.cached_tokens for c in firsts))


async def _body(request: web.Request) -> dict:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    return body


async def start_http_server(server: OpenAIServer, host: str, port: int,
                            ssl_context: ssl.SSLContext | None = None) -> RunningHttp:
    """Serve ``server`` on host:port (0 = any free port); returns the bound port."""
    runner = web.AppRunner(server.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=True)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise OSError(f"cannot listen on {host}:{port} for HTTP: {err.strerror or err}") from None
    bound = runner.addresses[0][1]
    return RunningHttp(runner, bound)
