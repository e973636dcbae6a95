"""The server's routes, each a method of `Routes`: the chat and text completions (whole or
streamed), the model list, health, metrics, the web page, and the OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from tinytx_jax.inference.decode_requests import Request as DecodeRequest
from tinytx_jax.serving import openai_api, responses
from tinytx_jax.serving.observability import ServerMetrics
from tinytx_jax.serving.openai_api import ApiError
from tinytx_jax.serving.service import ChatService

CHAT_PAGE = Path(__file__).resolve().parent / "web" / "chat.html"
DRAIN_FACTOR = 16  # bodies up to this many times the limit are read before the 413


def event(body: dict | str) -> str:
    """One server-sent event."""
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"


@dataclasses.dataclass
class Answer:
    """A request on its way: what was asked, its prompt, what the client is told besides,
    its id, the engine's request, and the reply's pieces as they come."""

    asked: openai_api.Sampled
    prompt: np.ndarray
    notices: list[str]
    ident: str
    decode: DecodeRequest
    pieces: AsyncIterator[tuple[str, str]]

    def usage(self) -> dict:
        return responses.usage_body(len(self.prompt), self.decode.completion_tokens)


class Routes:
    """The handlers of one app, over one chat service and its metrics."""

    def __init__(self, service: ChatService, metrics: ServerMetrics):
        self.service, self.settings, self.metrics = service, service.settings, metrics

    def check_key(self, request: Request) -> None:
        """With an API key set, a request must carry it as a bearer token."""
        if not self.settings.api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), self.settings.api_key.encode()
        ):
            raise ApiError(
                "missing or wrong API key: send 'Authorization: Bearer KEY'",
                status=401,
                code="invalid_api_key",
            )

    async def read_json(self, request: Request) -> object:
        """The body, if it is within the limit. A body somewhat over it is read to its end
        and dropped, so that the client, still sending, gets the 413 and not a reset."""
        limit = self.settings.max_body_bytes
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

    async def chat_completions(self, request: Request) -> Response:
        parse, prompt_of = openai_api.parse_chat_request, self.service.prompt
        return await self.complete(request, parse, prompt_of, "chatcmpl-", self.events)

    async def completions(self, request: Request) -> Response:
        """A text continued: what `--mode=sample` does for a text model, over HTTP."""
        parse, prompt_of = openai_api.parse_completion_request, self.service.text_prompt
        return await self.complete(request, parse, prompt_of, "cmpl-", self.text_events)

    async def complete(self, request: Request, parse, prompt_of, prefix: str, events) -> Response:
        """Check a completions request (`parse`), build its prompt (`prompt_of`), queue it
        on the engine (a 429 here, before any reply) and answer: whole, or as `events`."""
        self.check_key(request)
        asked = parse(await self.read_json(request), self.settings.defaults)
        # Normalising and encoding take time that grows with the text: off the event loop.
        prompt, notices = await asyncio.to_thread(prompt_of, asked)
        decode, queue = self.service.submit(asked, prompt)
        self.metrics.prompt_tokens.inc(len(prompt))
        pieces = self.service.reply(decode, queue, request.is_disconnected)
        timed = self.timed_pieces(pieces, decode)
        answer = Answer(asked, prompt, notices, responses.completion_id(prefix), decode, timed)
        if asked.stream:
            return StreamingResponse(events(answer), media_type="text/event-stream")
        return await self.whole(answer)

    async def text_events(self, answer: Answer) -> AsyncIterator[str]:
        """A text completion as server-sent events: a chunk per piece, the last with the
        finish reason (and usage when asked), then [DONE]."""
        name = self.service.name
        try:
            async for piece, finish in answer.pieces:
                usage, notices = None, None
                if finish:
                    notices = answer.notices + self.service.shift_notice(answer.decode)
                    usage = answer.usage() if answer.asked.include_usage else None
                yield event(responses.text_body(answer.ident, name, piece, finish, usage, notices))
        except ApiError as error:  # past the deadline, or the engine failed: said in-band
            yield event(error.body())
        yield event("[DONE]")

    async def inspect(self, request: Request) -> Response:
        """Inside one reply: `{"messages": [...], "reply": "..."}` (the conversation up to its
        last user message, and the assistant's reply to it) -> every head's attention,
        the top odds and the loss of each character of the reply."""
        self.check_key(request)
        body = await self.read_json(request)
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object")
        unsupported = sorted(set(body) - {"model", "messages", "reply"})
        if unsupported:
            raise ApiError(
                f"unsupported field {unsupported[0]!r}: /v1/inspect takes one reply, as "
                "'messages' and 'reply'",
                unsupported[0],
            )
        reply, limit = body.get("reply"), self.service.max_len
        if not isinstance(reply, str) or len(reply) > limit:
            raise ApiError(
                f"'reply' must be the text of one assistant reply, at most {limit} characters",
                "reply",
            )
        system, history, user = openai_api.conversation(body.get("messages"))
        view = await asyncio.to_thread(self.service.inspect, system, history, user, reply)
        return JSONResponse(view)

    async def whole(self, answer: Answer) -> Response:
        """The reply in one body, once it is complete (ClientGone: a 499, see client_gone)."""
        collected = [piece async for piece in answer.pieces]
        text, finish = "".join(piece for piece, _ in collected), collected[-1][1]
        notices = answer.notices + self.service.shift_notice(answer.decode)
        name, ident, decode = self.service.name, answer.ident, answer.decode
        if isinstance(answer.asked, openai_api.CompletionRequest):
            return JSONResponse(
                responses.text_body(ident, name, text, finish, answer.usage(), notices)
            )
        logprobs = None if decode.top_logprobs is None else decode.logprobs[: len(text)]
        body = responses.completion_body(
            ident, name, text, finish, answer.usage(), notices, logprobs
        )
        return JSONResponse(body)

    async def timed_pieces(
        self, pieces: AsyncIterator[tuple[str, str]], decode: DecodeRequest
    ) -> AsyncIterator[tuple[str, str]]:
        """The pieces, with time to first token and tokens out counted."""
        start, first = time.perf_counter(), True
        try:
            async for piece, finish in pieces:
                if first:
                    self.metrics.time_to_first_token.observe(time.perf_counter() - start)
                    first = False
                yield piece, finish
        finally:
            self.metrics.completion_tokens.inc(decode.completion_tokens)

    async def events(self, answer: Answer) -> AsyncIterator[str]:
        """The reply as server-sent events: a role chunk, a chunk per piece, the finish (and
        usage when asked), then [DONE]; an error past the first byte is said in-band."""
        name, ident, decode = self.service.name, answer.ident, answer.decode
        yield event(responses.chunk_body(ident, name, {"role": "assistant", "content": ""}))
        sent = 0  # characters streamed so far: where this piece's logprobs start
        try:
            async for piece, finish in answer.pieces:
                if piece:
                    logprobs = None
                    if decode.top_logprobs is not None:
                        logprobs = decode.logprobs[sent : sent + len(piece)]
                    sent += len(piece)
                    delta = {"content": piece}
                    yield event(responses.chunk_body(ident, name, delta, logprobs=logprobs))
                if finish:
                    notices = answer.notices + self.service.shift_notice(decode)
                    yield event(responses.chunk_body(ident, name, {}, finish, None, notices))
                    if answer.asked.include_usage:
                        yield event(responses.chunk_body(ident, name, {}, usage=answer.usage()))
        except ApiError as error:  # past the deadline, or the engine failed: said in-band
            yield event(error.body())
        yield event("[DONE]")

    async def models(self, request: Request) -> Response:
        self.check_key(request)
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model(self, request: Request) -> Response:
        self.check_key(request)
        name = self.service.name
        if request.path_params["name"] != name:
            raise ApiError(
                f"no model {request.path_params['name']!r}: this server has {name!r}",
                status=404,
                code="model_not_found",
            )
        return JSONResponse(self.model_card())

    def model_card(self) -> dict:
        created = int(time.time())
        return {
            "id": self.service.name,
            "object": "model",
            "created": created,
            "owned_by": "tinytx-jax",
        }

    async def health(self, request: Request) -> Response:
        facts = self.service.facts()
        return JSONResponse(facts, status_code=503 if self.service.engine.failure else 200)

    async def metrics_page(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    async def page(self, request: Request) -> Response:
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))

    async def refused(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def client_gone(self, request: Request, error: Exception) -> Response:
        return Response(status_code=499)  # nobody to answer: nginx's "client closed request"

    async def http_error(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        body = openai_api.error_body(f"{request.method} {request.url.path}: {error.detail}")
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)
