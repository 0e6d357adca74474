"""The HTTP side of `ckec serve`: a Starlette app with llama.cpp's server endpoints.

    POST /v1/completions, /v1/chat/completions   plain, or streamed as server-sent events
    GET  /v1/models, /health, /metrics
    POST /tokenize, /detokenize

Streams follow OpenAI's chunk format: the first chat delta carries the role, the last
chunk its `finish_reason`, an extra chunk the `usage` when `stream_options.include_usage`
is set, then `data: [DONE]`.  Every refusal is OpenAI's error shape with a 4xx status; 503
while the model loads.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ckeir.errors import CkeError
from ckeir.serve.metrics import exposition, registry_for
from ckeir.serve.model import Generation, ServedModel, check_prompt
from ckeir.serve.openai import Answer, APIError, parse_request, usage

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
HANG_UP_POLL_S = 0.1  # how often a plain request looks whether its client is still there


def create_app(model: ServedModel, on_failure=None) -> Starlette:
    """The app serving `model`; loading starts with the app (its lifespan) and the model
    closes when the app shuts down.  `on_failure(error)`: loading failed."""
    registry = registry_for(model)

    @asynccontextmanager
    async def lifespan(app):
        model.start_loading(on_failure)
        try:
            yield
        finally:
            model.close()

    def ready() -> ServedModel:
        if model.error is not None:
            raise APIError(f"the model failed to load: {model.error}", status=500)
        if not model.ready.is_set():
            raise APIError("Loading model", status=503, kind="unavailable_error")
        return model

    async def health(request: Request):
        ready()
        return JSONResponse({"status": "ok"})

    async def models(request: Request):
        m = ready()
        entry = {"id": m.name, "object": "model", "created": m.created, "owned_by": "ckeir"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def metrics(request: Request):
        return Response(exposition(registry), media_type=PROMETHEUS_TEXT)

    async def tokenize(request: Request):
        m = ready()
        body = await _json(request)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise APIError("'content' must be a string", param="content")
        tk = m.needs_tokenizer("/tokenize")
        add_special = body.get("add_special", False)
        ids = tk.encode_prompt(content) if add_special is True else tk.encode(content)
        return JSONResponse({"tokens": ids})

    async def detokenize(request: Request):
        m = ready()
        body = await _json(request)
        ids = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < m.vocab for i in ids
        ):
            raise APIError(
                f"'tokens' must be a list of ids from 0 to {m.vocab - 1}", param="tokens"
            )
        return JSONResponse({"content": m.needs_tokenizer("/detokenize").decode(ids)})

    async def completions(request: Request):
        return await _complete(request, chat=False)

    async def chat_completions(request: Request):
        return await _complete(request, chat=True)

    async def _complete(request: Request, chat: bool):
        m = ready()
        req = parse_request(await _json(request), chat)
        ids = _prompt_ids(m, req)
        gen = Generation(m, ids, req.max_tokens, req.sampling, req.stop)
        answer = Answer(chat, m.name)
        if req.stream:
            return EventSourceResponse(_events(gen, answer, req), ping=15, sep="\n")
        watch = asyncio.create_task(_cancel_on_hang_up(request, gen))
        try:
            text = "".join([piece async for piece in gen.pieces()])
        finally:
            watch.cancel()
        return JSONResponse(
            answer.whole(text, gen.finish_reason, usage(len(ids), gen.completion_tokens))
        )

    routes = [
        Route("/health", health),
        Route("/v1/health", health),
        Route("/v1/models", models),
        Route("/metrics", metrics),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
    ]
    handlers = {APIError: _api_error, CkeError: _cke_error, HTTPException: _http_error}
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)


async def _json(request: Request):
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(f"the request body is not valid JSON: {e}") from None


def _prompt_ids(m: ServedModel, req) -> list[int]:
    try:
        if req.chat:
            tk = m.needs_tokenizer("a chat")
            ids = tk.encode_prompt(tk.apply_chat_template(req.messages))
        elif isinstance(req.prompt, str):
            ids = m.needs_tokenizer("a text prompt").encode_prompt(req.prompt)
        else:
            ids = req.prompt
        return check_prompt(m, ids, req.max_tokens)
    except APIError:
        raise
    except CkeError as e:
        raise APIError(e.message, param="messages" if req.chat else "prompt") from None


async def _events(gen: Generation, answer: Answer, req):
    """The server-sent events of one streamed request; leaving early (the client hung up)
    cancels its sequence, which frees its slot at the scheduler's next step."""
    tail = {"usage": None} if req.include_usage else {}
    try:
        if answer.chat:
            yield _data({**answer.chunk(None, role=True), **tail})
        async for piece in gen.pieces():
            yield _data({**answer.chunk(piece), **tail})
        yield _data({**answer.chunk(None, gen.finish_reason), **tail})
        if req.include_usage:
            yield _data(answer.usage_chunk(usage(len(gen.ids), gen.completion_tokens)))
        yield {"data": "[DONE]"}
    finally:
        if not gen.seq.done:
            gen.seq.cancel()


async def _cancel_on_hang_up(request: Request, gen: Generation) -> None:
    """A plain request's client that hangs up before its answer frees the slot too."""
    while not gen.seq.done:
        if await request.is_disconnected():
            gen.seq.cancel()
            return
        await asyncio.sleep(HANG_UP_POLL_S)


def _data(obj: dict) -> dict:
    return {"data": json.dumps(obj, ensure_ascii=False)}


async def _api_error(request: Request, e: APIError):
    return JSONResponse(e.body(), status_code=e.status)


async def _cke_error(request: Request, e: CkeError):
    return await _api_error(request, APIError(e.message))


async def _http_error(request: Request, e: HTTPException):
    kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    return await _api_error(request, APIError(str(e.detail), status=e.status_code, kind=kind))
