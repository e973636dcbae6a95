"""What a caller hands the serving engine (decode_slots.py), and what it may refuse."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass
class Request:
    """One reply to decode. `emit(text, finish_reason)` is called from the engine thread:
    with each new piece of text (finish_reason None), then once with "stop" or "length"."""

    prompt: np.ndarray
    max_new_tokens: int
    emit: Callable[[str, str | None], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stream: bool = True  # False: the whole reply in one emit, at the end
    stop: tuple[str, ...] = ()  # texts of the request's own that end its reply, cut before
    top_logprobs: int | None = None  # set: record each token's logprob and this many others
    logprobs: list[dict] = dataclasses.field(default_factory=list)  # one per reply character
    cancelled: bool = False  # set by `DecodeSlots.cancel` (a client gone): the slot is freed
    cancelled_at: tuple[float, int] = (0.0, 0)  # when: monotonic seconds, engine round
    completion_tokens: int = 0
    context_shifted: bool = False


class EngineBusy(RuntimeError):
    """Every slot is busy and `max_waiting` requests already wait: try again later."""


class EngineStopping(RuntimeError):
    """The engine is winding down (the server is stopping): no new requests."""


class EngineFailed(RuntimeError):
    """The engine thread stopped on an exception; the message says which."""
