"""`--mode=serve`: the trained chat model over HTTP, as OpenAI's chat-completions API.

Routes: `POST /v1/chat/completions` (whole or streamed as server-sent events),
`GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus), and the web chat page at
`/`. Requests are decoded together by `decode_slots.DecodeSlots` in its own thread; the
event loop only parses, waits and writes. Every refusal has an OpenAI-shaped `error` body:
4xx for the request's faults, 429 at capacity, 504 past the deadline, 500 if the engine
failed (the server then stops with exit status 1, for a supervisor to restart it).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tinytx_jax import interrupt
from tinytx_jax.inference.decode_slots import Request as DecodeRequest
from tinytx_jax.serving import openai_api, responses
from tinytx_jax.serving.observability import AccessLog, ServerMetrics
from tinytx_jax.serving.openai_api import ApiError
from tinytx_jax.serving.service import ChatService, ClientGone

CHAT_PAGE = Path(__file__).resolve().parent / "web" / "chat.html"
DRAIN_FACTOR = 16  # bodies up to this many times the limit are read before the 413
GRACEFUL_SHUTDOWN_S = 5
KEEP_ALIVE_S = 75  # idle keep-alive connections stay open this long (uvicorn's default: 5)


class ServeError(Exception):
    """The server cannot start (an address in use, a host that does not resolve)."""


def create_app(service: ChatService, metrics: ServerMetrics | None = None) -> AccessLog:
    """The ASGI app: routes, the API-key check, OpenAI-shaped errors, metrics, access log."""
    settings = service.settings
    metrics = metrics or ServerMetrics(
        lambda: service.engine.queue_depth, lambda: service.engine.busy_slots
    )

    def check_key(request: Request) -> None:
        if not settings.api_key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), settings.api_key.encode()
        ):
            raise ApiError(
                "missing or wrong API key: send 'Authorization: Bearer KEY'",
                status=401,
                code="invalid_api_key",
            )

    async def read_json(request: Request) -> object:
        """The body, if it is within the limit. A body somewhat over it is read to its end
        and dropped, so that the client, still sending, gets the 413 and not a reset."""
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        too_big = ApiError(f"the request body is over {limit} bytes", status=413)
        if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
            raise too_big
        body, received = bytearray(), 0
        async for chunk in request.stream():
            received += len(chunk)
            if received <= limit:
                body += chunk
            elif received > DRAIN_FACTOR * limit:
                break
        if received > limit:
            raise too_big
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as error:
            raise ApiError(f"the request body is not valid JSON: {error}") from None

    async def chat_completions(request: Request) -> Response:
        check_key(request)
        chat_request = openai_api.parse_chat_request(await read_json(request), settings.defaults)
        # Normalising and encoding take time that grows with the text: off the event loop.
        prompt, notices = await asyncio.to_thread(service.prompt, chat_request)
        ident = responses.completion_id()
        decode, queue = service.submit(chat_request, prompt)  # a 429 here, before any reply
        metrics.prompt_tokens.inc(len(prompt))
        timed = timed_pieces(service.reply(decode, queue, request.is_disconnected), decode)
        if chat_request.stream:
            return StreamingResponse(
                events(chat_request, prompt, notices, ident, decode, timed),
                media_type="text/event-stream",
            )
        pieces = [piece async for piece in timed]  # ClientGone: a 499, see client_gone
        text, finish = "".join(piece for piece, _ in pieces), pieces[-1][1]
        usage = responses.usage_body(len(prompt), decode.completion_tokens)
        notices += service.shift_notice(decode)
        logprobs = None if decode.top_logprobs is None else decode.logprobs[: len(text)]
        return JSONResponse(
            responses.completion_body(ident, service.name, text, finish, usage, notices, logprobs)
        )

    async def timed_pieces(
        pieces: AsyncIterator[tuple[str, str]], decode: DecodeRequest
    ) -> AsyncIterator[tuple[str, str]]:
        """The pieces, with time to first token and tokens out counted."""
        start, first = time.perf_counter(), True
        try:
            async for piece, finish in pieces:
                if first:
                    metrics.time_to_first_token.observe(time.perf_counter() - start)
                    first = False
                yield piece, finish
        finally:
            metrics.completion_tokens.inc(decode.completion_tokens)

    async def events(
        chat_request: openai_api.ChatRequest,
        prompt: np.ndarray,
        notices: list[str],
        ident: str,
        decode: DecodeRequest,
        pieces: AsyncIterator[tuple[str, str]],
    ) -> AsyncIterator[str]:
        def event(body: dict | str) -> str:
            return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"

        yield event(responses.chunk_body(ident, service.name, {"role": "assistant", "content": ""}))
        sent = 0  # characters streamed so far: where this piece's logprobs start
        try:
            async for piece, finish in pieces:
                if piece:
                    logprobs = None
                    if decode.top_logprobs is not None:
                        logprobs = decode.logprobs[sent : sent + len(piece)]
                    sent += len(piece)
                    delta = {"content": piece}
                    yield event(responses.chunk_body(ident, service.name, delta, logprobs=logprobs))
                if finish:
                    notices += service.shift_notice(decode)
                    yield event(
                        responses.chunk_body(ident, service.name, {}, finish, None, notices)
                    )
                    if chat_request.include_usage:
                        usage = responses.usage_body(len(prompt), decode.completion_tokens)
                        yield event(responses.chunk_body(ident, service.name, {}, usage=usage))
        except ApiError as error:  # past the deadline, or the engine failed: said in-band
            yield event(error.body())
        yield event("[DONE]")

    async def models(request: Request) -> Response:
        check_key(request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        check_key(request)
        if request.path_params["name"] != service.name:
            raise ApiError(
                f"no model {request.path_params['name']!r}: this server has {service.name!r}",
                status=404,
                code="model_not_found",
            )
        return JSONResponse(model_card())

    def model_card() -> dict:
        created = int(time.time())
        return {"id": service.name, "object": "model", "created": created, "owned_by": "tinytx-jax"}

    async def health(request: Request) -> Response:
        facts = service.facts()
        return JSONResponse(facts, status_code=503 if service.engine.failure else 200)

    async def metrics_page(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    async def page(request: Request) -> Response:
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))

    async def refused(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def client_gone(request: Request, error: Exception) -> Response:
        return Response(status_code=499)  # nobody to answer: nginx's "client closed request"

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        body = openai_api.error_body(f"{request.method} {request.url.path}: {error.detail}")
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{name:path}", model, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={
            ApiError: refused,
            HTTPException: http_error,
            ClientDisconnect: client_gone,
            ClientGone: client_gone,
        },
    )
    return AccessLog(app, metrics)


def bound_socket(host: str, port: int) -> socket.socket:
    """Bound here, before the model loads, not by uvicorn: a taken port is one clear line at
    once. It listens only when `serve` starts, so no request waits on a loading model."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise ServeError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; choose another "
            "--port (or --host)"
        ) from None
    return sock


def serve(service: ChatService, sock: socket.socket) -> int:
    """Listen on `sock` (from `bound_socket`) once everything is compiled, print the address,
    serve until Ctrl-C / SIGTERM or an engine failure, let what is in flight finish (up to
    a few seconds), stop the engine. Returns the exit status: 0, or 1 after a failure."""
    sock.listen(2048)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            log_level="critical",  # its errors are the client's: the access log says them
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            timeout_keep_alive=KEEP_ALIVE_S,
            backlog=2048,
        )
    )

    def stop_on_failure(message: str) -> None:
        print(f"error: {message}; the server stops", file=sys.stderr, flush=True)
        server.should_exit = True

    service.engine.on_failure = stop_on_failure

    async def run(caught: interrupt.SignalCatcher) -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.005)
        if caught.received:  # a signal came before uvicorn took over the handlers
            server.should_exit = True
        elif server.started:
            print(
                f"Serving {service.name} on http://{shown}:{bound_port} (Ctrl-C to stop)",
                flush=True,
            )
        while not server.should_exit and not serving.done():
            await asyncio.sleep(0.05)
        # Stopping: what is in flight may finish within the grace period; whatever is
        # left then is ended by the engine (finish "length"), so every stream ends whole.
        grace_end = asyncio.get_running_loop().time() + GRACEFUL_SHUTDOWN_S - 1
        while service.engine.in_flight and asyncio.get_running_loop().time() < grace_end:
            await asyncio.sleep(0.05)
        service.engine.wind_down()
        await serving

    # uvicorn catches the signal while it serves and raises it again once it has stopped.
    with interrupt.SignalCatcher() as caught:
        asyncio.run(run(caught))
    service.engine.close()
    if service.engine.failure:
        return 1
    how = f" ({signal.Signals(caught.received).name})" if caught.received else ""
    early = service.engine.ended_early
    ended = (
        f"{early} requests still in flight after {GRACEFUL_SHUTDOWN_S - 1} s were ended early "
        "(finish_reason 'length')"
        if early
        else "requests in flight were finished"
    )
    print(f"Server stopped{how}: {ended}.", flush=True)
    return 0
