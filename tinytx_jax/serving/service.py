"""What the server does with a checked request: the REPL's prompt, the engine's reply.

Kept apart from the HTTP layer (server.py), so that a reply depends on the request alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator

import numpy as np

from tinytx_jax import dialogs
from tinytx_jax.inference import chat
from tinytx_jax.inference.decode_slots import DecodeSlots
from tinytx_jax.inference.decode_slots import Request as DecodeRequest
from tinytx_jax.inference.trained import TrainedModel
from tinytx_jax.serving import openai_api
from tinytx_jax.serving.openai_api import ApiError

MAX_BODY_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    api_key: str | None
    defaults: openai_api.Defaults
    system_prompt: str
    max_body_bytes: int = MAX_BODY_BYTES


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
            "status": "ok",
            "model": self.name,
            "data": meta["config"].get("data_path") or "built-in dialogs",
            "epoch": self.trained.epoch,
            "val_loss": round(float(meta["metrics"]["val_loss"]), 4),
            "max_len": self.max_len,
            "slots": self.engine.slots,
            "in_flight": self.engine.in_flight,
            "replies": self.engine.replies,
            "cancelled": self.engine.cancelled,
            "compiling": self.engine.compiling,
            "api_key_required": bool(self.settings.api_key),
        }

    def prompt(self, request: openai_api.ChatRequest) -> tuple[np.ndarray, list[str]]:
        """The REPL's prompt for this conversation (unknown characters dropped), and notices."""
        vocab = self.trained.vocab
        system = self.settings.system_prompt if request.system is None else request.system
        texts = [system, request.user, *(text for turn in request.history for text in turn)]
        unknown = vocab.unknown_chars("".join(texts))
        if not "".join(c for c in request.user if c not in unknown).strip():
            raise ApiError(
                "the last user message has no character of the model's vocabulary "
                f"(the model knows: {vocab.chars!r})",
                "messages",
                code="unsupported_characters",
            )
        # Encoding drops the unknown characters, as the REPL does before rendering.
        tokens = vocab.encode(dialogs.render_prompt(request.user, system, request.history))
        notices = []
        if unknown:
            notices.append(f"dropped characters not in the vocabulary: {chat.quoted(unknown)}")
        if len(tokens) > self.max_len:
            notices.append(
                f"the prompt has {len(tokens)} tokens, over max_len={self.max_len}: "
                f"kept the most recent {self.max_len}"
            )
        return tokens, notices

    async def reply(
        self, request: openai_api.ChatRequest, prompt: np.ndarray
    ) -> AsyncIterator[tuple[str, str | None, DecodeRequest]]:
        """The reply's pieces as the engine sends them; the last one has a finish reason.
        Leaving early (a client gone) frees the request's slot."""
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
        )
        self.engine.submit(decode)
        finish = None
        try:
            while finish is None:
                piece, finish = await pieces.get()
                yield piece, finish, decode
        finally:
            decode.cancelled = finish is None

    def shift_notice(self, decode: DecodeRequest) -> list[str]:
        if not decode.context_shifted:
            return []
        return [
            f"prompt + reply exceed max_len={self.max_len} tokens: each further token was "
            f"predicted from the most recent {self.max_len}"
        ]
