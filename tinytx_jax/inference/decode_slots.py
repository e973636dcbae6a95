"""The serving engine's host side: requests scheduled into slots, replies streamed back.

A fixed number of slots each hold one request. Between two decode steps, finished or
cancelled requests leave and waiting ones join (their prompts prefilled together), so a
reply never waits for another one to end. All device work (decode_programs.py) runs in
one engine thread; a request hands back its reply piece by piece through its `emit`.
At most `max_waiting` requests wait for a slot (beyond it `submit` raises EngineBusy),
and an exception in the engine thread ends every request with "error" and the engine:
`failure` says why, and `on_failure` hears it once.

Long contexts go exactly as in the REPL (generation.py): a prompt keeps its most recent
`max_len` tokens, and once a context holds `max_len` tokens each further token is
predicted from the most recent `max_len` by refilling the slot with them (a window slid
by one token), so a reply is the REPL's reply at any prompt length.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tinytx_jax.inference.decode_programs import DecodePrograms
from tinytx_jax.inference.decode_requests import EngineBusy, EngineFailed, EngineStopping, Request
from tinytx_jax.inference.sampling import held_back, stop_prefixes, usable_stop_texts
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.text.dialogs import TAGS, cut_at_tag
from tinytx_jax.text.vocabulary import Vocabulary


@dataclasses.dataclass
class _Slot:
    request: Request
    context: list[int]  # the kept prompt, then every sampled token
    cached: int  # how many of `context` have keys and values in the slot's cache
    text: str = ""
    emitted: int = 0
    stops: tuple[str, ...] = ()  # the engine's stop texts and the request's own
    prefixes: frozenset[str] = frozenset()  # what may not be shown yet


class DecodeSlots:
    """The scheduler: `submit` a Request from any thread; `close` stops it.

    With `warm_up`, the programs that can serve any request compile before the engine
    starts and the others in the background, so that no request waits on a compilation."""

    def __init__(
        self,
        model: TinyTransformer,
        params: Any,
        vocab: Vocabulary,
        slots: int = 32,
        top_k: int = 0,
        stop_texts: tuple[str, ...] = TAGS,
        warm_up: bool = False,
        max_waiting: int = 1024,
        on_failure: Callable[[str], None] | None = None,
    ):
        self.vocab, self.slots = vocab, slots
        self.programs = DecodePrograms(model, params, slots, top_k)
        self.max_len = model.config.max_len
        self.stop_texts = usable_stop_texts(stop_texts, vocab)
        self._stop_prefixes = stop_prefixes(self.stop_texts)
        self._waiting: queue.Queue[Request | None] = queue.Queue()
        self._active: dict[int, _Slot] = {}
        self._closed = False
        self.max_waiting = max_waiting
        self.on_failure = on_failure
        self.failure: str | None = None
        self.replies = 0  # requests answered to the end
        self.cancelled = 0  # requests whose client left before the end
        self.rounds = 0  # scheduling rounds: each prefills who joins, then steps once
        self.most_rounds_to_free = 0  # the most rounds begun between a cancel and its freeing
        self.on_freed: Callable[[float], None] | None = None  # seconds from cancel to free
        self.ended_early = 0  # requests ended by `wind_down`, with finish "length"
        self._winding_down = False
        if warm_up:
            self.programs.compile_ready()
            self.programs.compile_in_background()
        self._thread = threading.Thread(target=self._loop, name="decode-slots", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return len(self._active) + self._waiting.qsize()

    @property
    def busy_slots(self) -> int:
        return len(self._active)

    @property
    def queue_depth(self) -> int:
        return self._waiting.qsize()

    def submit(self, request: Request) -> None:
        """Queue `request`; EngineBusy if too many wait, EngineFailed if the engine stopped."""
        if self.failure:
            raise EngineFailed(self.failure)
        if self._winding_down:
            raise EngineStopping("the server is stopping")
        if self._waiting.qsize() + len(self._active) >= self.slots + self.max_waiting:
            raise EngineBusy(f"{self.slots} slots busy and {self.max_waiting} requests waiting")
        self._waiting.put(request)

    def cancel(self, request: Request) -> None:
        """The request's client has gone: free its slot at the start of the next round."""
        request.cancelled_at = (time.monotonic(), self.rounds)
        request.cancelled = True

    def _freed(self, request: Request) -> None:
        self.cancelled += 1
        since, round_ = request.cancelled_at
        self.most_rounds_to_free = max(self.most_rounds_to_free, self.rounds - round_)
        if self.on_freed:
            self.on_freed(time.monotonic() - since)

    def wind_down(self) -> None:
        """End every request in flight now, each with what it has so far and finish
        "length" (a stream then ends properly), and take no new ones."""
        self._winding_down = True
        self._waiting.put(None)  # wakes an idle engine

    def close(self) -> None:
        self.programs.stop_compiling()
        self._closed = True
        self._waiting.put(None)
        self._thread.join(timeout=10)

    def _prefill(self, fills: list[tuple[int, list[int]]]) -> None:
        """Refill the caches of slots from position 0 in one batch, and advance each by its
        next token. `fills` holds (slot index, context tokens to keep); what the compiled
        program at hand cannot hold goes in the next batch."""
        longest = max(len(tokens) for _, tokens in fills)
        length, rows = self.programs.prefill_shape(longest, len(fills))
        fills, rest = fills[:rows], fills[rows:]
        padded = fills + [fills[0]] * (rows - len(fills))  # twins write the same values
        chunks = np.zeros((rows, length), np.int32)
        for row, (_, tokens) in enumerate(padded):
            chunks[row, : len(tokens)] = tokens
        requests = [self._active[index].request for index, _ in padded]
        picked = self.programs.prefill(
            np.array([index for index, _ in padded], np.int32),
            chunks,
            np.array([len(tokens) for _, tokens in padded], np.int32),
            np.array([r.seed for r in requests], np.uint32),
            np.array([r.completion_tokens for r in requests], np.int32),
            np.array([r.temperature for r in requests], np.float32),
            np.array([r.top_p for r in requests], np.float32),
        )
        for row, (index, kept) in enumerate(fills):
            slot = self._active[index]
            slot.context, slot.cached = list(kept), len(kept)
            self._advance(index, *(a[row] for a in picked))
        if rest:
            self._prefill(rest)

    def _loop(self) -> None:
        try:
            self._schedule()
        except Exception as error:  # the engine is gone: say so to everyone waiting on it
            self.failure = f"the decode engine failed: {type(error).__name__}: {error}"
            ended = [slot.request for slot in self._active.values()]
            self._active.clear()
            while not self._waiting.empty():
                ended.append(self._waiting.get_nowait())
            for request in ended:
                if request is not None:
                    request.emit("", "error")
            if self.on_failure:
                self.on_failure(self.failure)

    def _schedule(self) -> None:
        while not self._closed:
            self.rounds += 1
            if self._winding_down:
                self._end_everything()
            joining = [self._waiting.get()] if not self._active else []
            while len(self._active) + len(joining) < self.slots and not self._waiting.empty():
                joining.append(self._waiting.get_nowait())
            fills = [fill for fill in map(self._join, joining) if fill]
            for index, slot in list(self._active.items()):
                if slot.request.cancelled:
                    del self._active[index]
                    self._freed(slot.request)
                elif slot.cached >= self.max_len:  # full: the window slides by one token
                    slot.request.context_shifted = True
                    fills.append((index, slot.context[-self.max_len :]))
            if fills:
                self._prefill(fills)
            if any(slot.cached < self.max_len for slot in self._active.values()):
                self._decode_step()

    def _token_entry(self, token: int, logprob) -> dict:
        char = self.vocab.chars[token]
        return {"token": char, "logprob": float(logprob), "bytes": list(char.encode())}

    def _end_everything(self) -> None:
        for slot in self._active.values():
            slot.request.emit(slot.text[slot.emitted :], "length")
            self.ended_early += 1
        self._active.clear()
        while not self._waiting.empty():
            request = self._waiting.get_nowait()
            if request is not None:
                request.emit("", "length")
                self.ended_early += 1

    def _join(self, request: Request | None) -> tuple[int, list[int]] | None:
        """Give `request` a free slot; its prefill, (slot index, prompt tokens to keep)."""
        if request is None:
            return None
        if request.cancelled:
            self._freed(request)
            return None
        index = next(i for i in range(self.slots) if i not in self._active)
        prompt = [int(t) for t in request.prompt[-self.max_len :]]
        request.context_shifted = len(request.prompt) > self.max_len
        stops = self.stop_texts + request.stop
        prefixes = stop_prefixes(stops) if request.stop else self._stop_prefixes
        self._active[index] = _Slot(request, prompt, cached=0, stops=stops, prefixes=prefixes)
        return index, prompt

    def _decode_step(self) -> None:
        """Advance every slot whose cache has room by one token (full ones slide first), in
        the smallest step that covers the busy slots."""
        stepping = {i: s for i, s in self._active.items() if s.cached < self.max_len}
        bucket = self.programs.step_bucket(max(stepping) + 1)
        tokens, positions, seeds, draws, temps, top_p = self.programs.idle_inputs(bucket)
        for index, slot in stepping.items():
            request = slot.request
            tokens[index], positions[index] = slot.context[-1], slot.cached
            seeds[index], draws[index] = request.seed, request.completion_tokens
            temps[index], top_p[index] = request.temperature, request.top_p
        picked = self.programs.step(tokens, positions, seeds, draws, temps, top_p)
        for index, slot in stepping.items():
            slot.cached += 1
            self._advance(index, *(a[index] for a in picked))

    def _advance(self, index: int, token, logprob=0.0, top_ids=(), top_logprobs=()) -> None:
        """Add a sampled token to slot `index`; send what is safe to show; end if done."""
        slot = self._active[index]
        request = slot.request
        token = int(token)
        if request.top_logprobs is not None:  # recorded before the text that emit sends
            others = zip(top_ids[: request.top_logprobs], top_logprobs, strict=False)
            request.logprobs.append(
                {
                    **self._token_entry(token, logprob),
                    "top_logprobs": [self._token_entry(int(t), p) for t, p in others],
                }
            )
        slot.context.append(token)
        slot.text += self.vocab.chars[token]
        request.completion_tokens += 1
        finish = None
        if any(slot.text.endswith(stop) for stop in slot.stops):
            finish = "stop"
            slot.text = cut_at_tag(slot.text, slot.stops)
        elif request.completion_tokens >= request.max_new_tokens:
            finish = "length"
        if finish:
            del self._active[index]
            self.replies += 1
            request.emit(slot.text[slot.emitted :], finish)
        elif request.stream:
            shown = len(slot.text) - held_back(slot.text, slot.prefixes)
            if shown > slot.emitted:
                request.emit(slot.text[slot.emitted : shown], None)
                slot.emitted = shown
