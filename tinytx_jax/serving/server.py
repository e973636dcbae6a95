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
import signal
import socket
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from tinytx_jax import interrupt
from tinytx_jax.serving.observability import AccessLog, ServerMetrics
from tinytx_jax.serving.openai_api import ApiError
from tinytx_jax.serving.routes import Routes
from tinytx_jax.serving.service import ChatService, ClientGone

GRACEFUL_SHUTDOWN_S = 5
KEEP_ALIVE_S = 75  # idle keep-alive connections stay open this long (uvicorn's default: 5)


class ServeError(Exception):
    """The server cannot start (an address in use, a host that does not resolve)."""


def create_app(service: ChatService, metrics: ServerMetrics | None = None) -> AccessLog:
    """The ASGI app: routes, the API-key check, OpenAI-shaped errors, metrics, access log."""
    metrics = metrics or ServerMetrics(
        lambda: service.engine.queue_depth, lambda: service.engine.busy_slots
    )
    service.engine.on_freed = metrics.cancel_to_free.observe
    routes = Routes(service, metrics)
    app = Starlette(
        routes=[
            Route("/", routes.page, methods=["GET"]),
            Route("/health", routes.health, methods=["GET"]),
            Route("/metrics", routes.metrics_page, methods=["GET"]),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/models/{name:path}", routes.model, methods=["GET"]),
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
            Route("/v1/completions", routes.completions, methods=["POST"]),
            Route("/v1/inspect", routes.inspect, methods=["POST"]),
        ],
        exception_handlers={
            ApiError: routes.refused,
            HTTPException: routes.http_error,
            ClientDisconnect: routes.client_gone,
            ClientGone: routes.client_gone,
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
