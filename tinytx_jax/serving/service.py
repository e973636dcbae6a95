"""What the server does with a checked request: the REPL's prompt, the engine's reply.

Kept apart from the HTTP layer (server.py), so that a reply depends on the request alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np

from tinytx_jax.inference import chat, inspection
from tinytx_jax.inference.decode_requests import EngineBusy, EngineFailed, EngineStopping
from tinytx_jax.inference.decode_requests import Request as DecodeRequest
from tinytx_jax.inference.decode_slots import DecodeSlots
from tinytx_jax.inference.trained import TrainedModel
from tinytx_jax.serving import openai_api
from tinytx_jax.serving.openai_api import ApiError
from tinytx_jax.text import dialogs

MAX_BODY_BYTES = 1 << 20
RETRY_AFTER_S = 1  # what a 429 tells the client to wait
DISCONNECT_POLL_S = 0.25  # how often a reply that does not stream checks its client


def retry_later(message: str, status: int, kind: str, code: str) -> ApiError:
    """A refusal the client may retry: the status, and `Retry-After`."""
    return ApiError(
        f"{message}: retry shortly",
        status=status,
        kind=kind,
        code=code,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


class ClientGone(Exception):
    """The client of a reply that does not stream disconnected: its slot was freed."""


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    api_key: str | None
    defaults: openai_api.Defaults
    system_prompt: str
    max_body_bytes: int = MAX_BODY_BYTES
    timeout_s: float = 300.0  # a request not answered by then is ended with a 504


class ChatService:
    """Turns checked requests into prompts for the engine and collects its replies."""

    def __init__(
        self, trained: TrainedModel, engine: DecodeSlots, settings: ServeSettings, name: str
    ):
        self.trained, self.engine, self.settings, self.name = trained, engine, settings, name
        self.max_len = trained.model.config.max_len

    def facts(self) -> dict:
        """What the web page shows about the model, and what /health reports."""
        meta = self.trained.meta
        return {
            "status": "failed" if self.engine.failure else "ok",
            "model": self.name,
            "data": self.trained.run.data.data_path or "built-in dialogs",
            "epoch": self.trained.epoch,
            "val_loss": round(float(meta["metrics"]["val_loss"]), 4),
            "max_len": self.max_len,
            "slots": self.engine.slots,
            "busy_slots": self.engine.busy_slots,
            "queue_depth": self.engine.queue_depth,
            "in_flight": self.engine.in_flight,
            "replies": self.engine.replies,
            "cancelled": self.engine.cancelled,
            "most_rounds_to_free": self.engine.most_rounds_to_free,
            "programs_compiled": self.engine.programs.compiled_count,
            "programs_compiling": self.engine.programs.left_to_compile,
            "compiled_after_ready": self.engine.programs.compiled_late,
            "api_key_required": bool(self.settings.api_key),
            **({"error": self.engine.failure} if self.engine.failure else {}),
        }

    def prompt(self, request: openai_api.ChatRequest) -> tuple[np.ndarray, list[str]]:
        """The REPL's prompt for this conversation (unknown characters dropped), and notices."""
        text, unknown = self.rendered(request.system, request.history, request.user)
        return self._encoded(text, unknown)

    def text_prompt(self, request: openai_api.CompletionRequest) -> tuple[np.ndarray, list[str]]:
        """The text to continue, as `--mode=sample` takes it (unknown characters dropped)."""
        unknown = self.trained.vocab.unknown_chars(request.prompt)
        if not "".join(c for c in request.prompt if c not in unknown):
            raise ApiError(
                "the prompt has no character of the model's vocabulary "
                f"(the model knows: {self.trained.vocab.chars!r})",
                "prompt",
                code="unsupported_characters",
            )
        return self._encoded(request.prompt, unknown)

    def _encoded(self, text: str, unknown: str) -> tuple[np.ndarray, list[str]]:
        # Encoding drops the unknown characters, as the REPL does before rendering.
        tokens = self.trained.vocab.encode(text)
        notices = []
        if unknown:
            notices.append(f"dropped characters not in the vocabulary: {chat.quoted(unknown)}")
        if len(tokens) > self.max_len:
            notices.append(
                f"the prompt has {len(tokens)} tokens, over max_len={self.max_len}: "
                f"kept the most recent {self.max_len}"
            )
        return tokens, notices

    def rendered(
        self, system: str | None, history: tuple[dialogs.Turn, ...], user: str
    ) -> tuple[str, str]:
        """The rendered prompt of a conversation, each user turn normalised as the REPL
        does, and the characters the vocabulary lacks (a 400 when nothing usable is left)."""
        if self.trained.plain_text:
            raise ApiError(
                "this model continues plain text, it does not chat: POST /v1/completions "
                "with a 'prompt'",
                code="text_model",
            )
        vocab, normalize = self.trained.vocab, self.trained.normalize_user
        system = self.settings.system_prompt if system is None else system
        user = normalize(user)
        history = tuple((normalize(asked), answered) for asked, answered in history)
        texts = [system, user, *(text for turn in history for text in turn)]
        unknown = vocab.unknown_chars("".join(texts))
        if not user.strip():
            raise ApiError(
                "the last user message is empty once normalised (only characters that "
                "normalising drops, such as zero-width spaces): send some text",
                "messages",
                code="empty_message",
            )
        if not "".join(c for c in user if c not in unknown).strip():
            raise ApiError(
                "the last user message has no character of the model's vocabulary "
                f"(the model knows: {vocab.chars!r})",
                "messages",
                code="unsupported_characters",
            )
        return dialogs.render_prompt(user, system, history), unknown

    def inspect(
        self, system: str | None, history: tuple[dialogs.Turn, ...], user: str, reply: str
    ) -> dict:
        """What the model does while writing `reply` to this conversation (and the end tag
        after it): every head's attention, the top odds and the loss per character."""
        prompt, _ = self.rendered(system, history, user)
        view = inspection.reply_view(self.trained, prompt, reply + dialogs.ASSISTANT_END)
        return view.as_json()

    def submit(
        self, request: openai_api.Sampled, prompt: np.ndarray
    ) -> tuple[DecodeRequest, asyncio.Queue]:
        """Queue the request on the engine, before any reply is sent: a full queue is a 429,
        a failed engine a 500. Returns the engine's request and the queue of its pieces."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        seed = secrets.randbits(32) if request.seed is None else request.seed % (1 << 32)
        decode = DecodeRequest(
            prompt,
            request.max_tokens,
            lambda piece, finish: loop.call_soon_threadsafe(pieces.put_nowait, (piece, finish)),
            temperature=request.temperature,
            top_p=request.top_p,
            seed=seed,
            stream=request.stream,
            stop=request.stop,
            top_logprobs=request.top_logprobs,
        )
        try:
            self.engine.submit(decode)
        except EngineBusy as busy:
            raise retry_later(
                f"the server is at capacity ({busy})", 429, "rate_limit_exceeded", "server_busy"
            ) from None
        except EngineFailed as failed:
            raise ApiError(str(failed), status=500, kind="server_error") from None
        except EngineStopping as stopping:
            raise retry_later(
                f"{stopping}: retry on another server", 503, "server_error", "server_stopping"
            ) from None
        return decode, pieces

    async def reply(
        self,
        decode: DecodeRequest,
        pieces: asyncio.Queue,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[tuple[str, str]]:
        """The submitted request's pieces as the engine sends them; the last one has a
        finish reason. Past the deadline an ApiError 504, on an engine failure a 500.
        Leaving early (a client gone, which `disconnected` reports for replies that do not
        stream) frees the request's slot."""
        deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
        finish = None
        try:
            while finish is None:
                piece, finish = await self._next_piece(pieces, deadline, disconnected)
                if finish == "error":
                    raise ApiError(str(self.engine.failure), status=500, kind="server_error")
                yield piece, finish
        finally:
            if finish is None:
                self.engine.cancel(decode)

    async def _next_piece(
        self,
        pieces: asyncio.Queue,
        deadline: float,
        disconnected: Callable[[], Awaitable[bool]] | None,
    ) -> tuple[str, str | None]:
        loop = asyncio.get_running_loop()
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise ApiError(
                    f"no reply within the server's deadline of {self.settings.timeout_s:g} s: "
                    "ask for fewer max_tokens or retry later",
                    status=504,
                    kind="timeout",
                    code="deadline_exceeded",
                )
            try:
                return await asyncio.wait_for(pieces.get(), min(left, DISCONNECT_POLL_S))
            except TimeoutError:
                if disconnected is not None and await disconnected():
                    raise ClientGone from None

    def shift_notice(self, decode: DecodeRequest) -> list[str]:
        if not decode.context_shifted:
            return []
        return [
            f"prompt + reply exceed max_len={self.max_len} tokens: each further token was "
            f"predicted from the most recent {self.max_len}"
        ]
