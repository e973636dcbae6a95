"""Concurrent replies decoded together: requests share one batched decode step.

A fixed number of slots each hold one request's KV cache. Between two decode steps,
finished requests leave and waiting ones join (their prompt is prefilled into a free
slot), so a reply never waits for another one to end. All device work runs in one
engine thread; a request hands back its reply piece by piece through its `emit`.

Each slot samples with its own temperature, top-p and seed; its n-th token is drawn from
`fold_in(key(seed), n)`, so a seeded reply does not depend on what else is in flight.
A context that fills the cache (`max_len` tokens) is refilled with its most recent half
and decoding goes on: a context shift, where the REPL slides a window token by token.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax.data import TAGS, Vocabulary, cut_at_tag
from tinytx_jax.model import TinyTransformer
from tinytx_jax.sampling import usable_stop_texts


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
    cancelled: bool = False  # set by the caller (a client gone): the slot is freed
    completion_tokens: int = 0
    context_shifted: bool = False


@dataclasses.dataclass
class _Slot:
    request: Request
    context: list[int]  # the kept prompt, then every sampled token
    cached: int  # how many of `context` have keys and values in the slot's cache
    text: str = ""
    emitted: int = 0


def sample_row(
    logits_V: jax.Array,
    seed: jax.Array,
    draw: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: int,
) -> jax.Array:
    """One token: greedy where temperature is 0, else tempered with top-k and top-p."""
    key = jax.random.fold_in(jax.random.key(seed), draw)
    scaled_V = logits_V.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    if 0 < top_k < scaled_V.shape[0]:
        kth_largest = jax.lax.top_k(scaled_V, top_k)[0][-1]
        scaled_V = jnp.where(scaled_V < kth_largest, -jnp.inf, scaled_V)
    descending_V = jnp.sort(scaled_V)[::-1]
    probs_V = jax.nn.softmax(descending_V)
    kept = jnp.sum(jnp.cumsum(probs_V) - probs_V < top_p)  # at least the most likely
    scaled_V = jnp.where(scaled_V < descending_V[kept - 1], -jnp.inf, scaled_V)
    sampled = jax.random.categorical(key, scaled_V)
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits_V)).astype(jnp.int32)


# One token per row, each row with its own seed, draw, temperature and top-p.
sample_rows = jax.vmap(sample_row, in_axes=(0, 0, 0, 0, 0, None))


def prefill_length(length: int, max_len: int) -> int:
    """The padded length of a prefill: the next power of two from 32, at most max_len."""
    return min(max(32, 1 << (length - 1).bit_length()), max_len)


def _ignore(text: str, finish: str | None) -> None:
    del text, finish


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def stop_prefixes(stop_texts: tuple[str, ...]) -> frozenset[str]:
    """Every proper beginning of a stop text: what a reply may not show yet."""
    return frozenset(stop[:n] for stop in stop_texts for n in range(1, len(stop)))


def held_back(text: str, prefixes: frozenset[str]) -> int:
    """How many trailing characters of `text` could still become a stop text."""
    longest = min(max(map(len, prefixes), default=0), len(text))
    return next((n for n in range(longest, 0, -1) if text[-n:] in prefixes), 0)


class DecodeSlots:
    """The engine: `submit` a Request from any thread; `close` stops it.

    With `warm_up`, the decode step and the prefill of a short prompt compile before the
    engine starts, and every other prefill shape in a background thread meanwhile."""

    def __init__(
        self,
        model: TinyTransformer,
        params: Any,
        vocab: Vocabulary,
        slots: int = 32,
        top_k: int = 0,
        stop_texts: tuple[str, ...] = TAGS,
        warm_up: bool = False,
    ):
        self.model, self.params, self.vocab, self.slots = model, params, vocab, slots
        self.max_len = model.config.max_len
        self.stop_texts = usable_stop_texts(stop_texts, vocab)
        self._stop_prefixes = stop_prefixes(self.stop_texts)
        self.top_k = top_k
        self._waiting: queue.Queue[Request | None] = queue.Queue()
        self._active: dict[int, _Slot] = {}
        self._closed = False
        self.replies = 0  # requests answered to the end
        self.cancelled = 0  # requests whose client left before the end
        self._prefill_jit = jax.jit(self._prefill_fn, donate_argnums=1)
        self._prefills: dict[tuple[int, int], Callable[..., tuple[jax.Array, Any]]] = {}
        self._step = jax.jit(self._step_fn, donate_argnums=1)
        self._cache = self._empty_cache()
        self.compiling = 0  # prefill shapes the background warm-up has still to compile
        self._warm_thread: threading.Thread | None = None
        if warm_up:
            self._warm_up()
        self._thread = threading.Thread(target=self._loop, name="decode-slots", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return len(self._active) + self._waiting.qsize()

    def submit(self, request: Request) -> None:
        self._waiting.put(request)

    def close(self) -> None:
        self._closed = True
        self._waiting.put(None)
        self._thread.join(timeout=10)
        if self._warm_thread:
            self._warm_thread.join()

    def _warm_up(self) -> None:
        shapes = [
            (prefill_length(1 << i, self.max_len), min(1 << j, self.slots))
            for i in range(self.max_len.bit_length())
            for j in range(self.slots.bit_length() + 1)
        ]
        shapes = sorted(set(shapes), key=lambda shape: (shape[1], shape[0]))
        alone = [shape for shape in shapes if shape[1] == 1]  # a request on its own
        for shape in alone:
            self._prefill_program(*shape)
        self._decode_step()
        self.compiling = len(shapes) - len(alone)

        def compile_the_rest() -> None:
            for shape in shapes[len(alone) :]:
                if self._closed:  # an exit must not meet a compilation in flight
                    return
                self._prefill_program(*shape)
                self.compiling -= 1

        self._warm_thread = threading.Thread(target=compile_the_rest, name="warm-up", daemon=True)
        self._warm_thread.start()

    def _prefill_program(self, bucket: int, rows: int) -> Callable[..., tuple[jax.Array, Any]]:
        """The compiled prefill of `rows` prompts padded to `bucket` tokens."""
        if (bucket, rows) not in self._prefills:
            ints, rows_of = np.int32, lambda dtype: jax.ShapeDtypeStruct((rows,), dtype)
            self._prefills[bucket, rows] = self._prefill_jit.lower(
                *_abstract((self.params, self._cache)),
                rows_of(ints),
                jax.ShapeDtypeStruct((rows, bucket), ints),
                rows_of(ints),
                rows_of(np.uint32),
                rows_of(ints),
                rows_of(np.float32),
                rows_of(np.float32),
            ).compile()
        return self._prefills[bucket, rows]

    def _empty_cache(self) -> Any:
        _, variables = self.model.apply(
            {"params": self.params}, jnp.zeros((1, 1), jnp.int32), decode_start=0, mutable=["cache"]
        )
        return jax.tree.map(
            lambda c: jnp.zeros((self.slots, *c.shape), c.dtype), variables["cache"]
        )

    def _forward(self, params, cache_1, tokens_T, start):
        logits, variables = self.model.apply(
            {"params": params, "cache": cache_1},
            tokens_T[None],
            decode_start=start,
            mutable=["cache"],
        )
        return logits[0], variables["cache"]

    def _step_fn(self, params, cache, tokens_N, positions_N, seeds_N, draws_N, temps_N, top_p_N):
        logits_NxV, cache = jax.vmap(
            lambda cache_1, token, position: self._forward(params, cache_1, token[None], position)
        )(cache, tokens_N, positions_N)
        return sample_rows(logits_NxV[:, -1], seeds_N, draws_N, temps_N, top_p_N, self.top_k), cache

    def _prefill_fn(self, params, cache, slots_K, chunks_KxT, lengths_K, *sampling_K):
        slot_caches = jax.tree.map(lambda c: c[slots_K], cache)
        logits_KxTxV, slot_caches = jax.vmap(
            lambda cache_1, chunk_T: self._forward(params, cache_1, chunk_T, 0)
        )(slot_caches, chunks_KxT)
        last_KxV = jnp.take_along_axis(logits_KxTxV, (lengths_K - 1)[:, None, None], axis=1)[:, 0]
        cache = jax.tree.map(lambda c, new: c.at[slots_K].set(new), cache, slot_caches)
        return sample_rows(last_KxV, *sampling_K, self.top_k), cache

    def _prefill(self, fills: list[tuple[int, list[int]]]) -> None:
        """Refill the caches of slots from position 0, all in one batch, and advance each
        by its next token. `fills` holds (slot index, context tokens to keep)."""
        # Powers of two, for lengths and rows alike: few compilations, all made at start-up.
        bucket = prefill_length(max(len(tokens) for _, tokens in fills), self.max_len)
        rows = 1 << (len(fills) - 1).bit_length()
        padded = fills + [fills[0]] * (rows - len(fills))  # twins write the same values
        chunks = np.zeros((rows, bucket), np.int32)
        for row, (_, tokens) in enumerate(padded):
            chunks[row, : len(tokens)] = tokens
        requests = [self._active[index].request for index, _ in padded]
        tokens, self._cache = self._prefill_program(bucket, rows)(
            self.params,
            self._cache,
            np.array([index for index, _ in padded], np.int32),
            chunks,
            np.array([len(tokens) for _, tokens in padded], np.int32),
            np.array([r.seed for r in requests], np.uint32),
            np.array([r.completion_tokens for r in requests], np.int32),
            np.array([r.temperature for r in requests], np.float32),
            np.array([r.top_p for r in requests], np.float32),
        )
        tokens = np.asarray(tokens)
        for row, (index, kept) in enumerate(fills):
            slot = self._active[index]
            slot.context, slot.cached = list(kept), len(kept)
            self._advance(index, int(tokens[row]))

    def _loop(self) -> None:
        while not self._closed:
            joining = [self._waiting.get()] if not self._active else []
            while len(self._active) + len(joining) < self.slots and not self._waiting.empty():
                joining.append(self._waiting.get_nowait())
            fills = [fill for fill in map(self._join, joining) if fill]
            for index, slot in list(self._active.items()):
                if slot.request.cancelled:
                    del self._active[index]
                    self.cancelled += 1
                elif slot.cached >= self.max_len:  # the cache is full: keep the recent half
                    slot.request.context_shifted = True
                    fills.append((index, slot.context[-(self.max_len // 2) :]))
            if fills:
                self._prefill(fills)
            if self._active:
                self._decode_step()

    def _join(self, request: Request | None) -> tuple[int, list[int]] | None:
        """Give `request` a free slot; its prefill, (slot index, prompt tokens to keep)."""
        if request is None:
            return None
        if request.cancelled:
            self.cancelled += 1
            return None
        index = next(i for i in range(self.slots) if i not in self._active)
        prompt = [int(t) for t in request.prompt[-self.max_len :]]
        request.context_shifted = len(request.prompt) > self.max_len
        self._active[index] = _Slot(request, prompt, cached=0)
        return index, prompt

    def _decode_step(self) -> None:
        n = self.slots
        tokens, positions = np.zeros(n, np.int32), np.zeros(n, np.int32)
        seeds, draws = np.zeros(n, np.uint32), np.zeros(n, np.int32)
        temps, top_p = np.zeros(n, np.float32), np.ones(n, np.float32)
        for index, slot in self._active.items():
            request = slot.request
            tokens[index], positions[index] = slot.context[-1], slot.cached
            seeds[index], draws[index] = request.seed, request.completion_tokens
            temps[index], top_p[index] = request.temperature, request.top_p
        next_tokens, self._cache = self._step(
            self.params, self._cache, tokens, positions, seeds, draws, temps, top_p
        )
        next_tokens = np.asarray(next_tokens)  # the one host sync per step
        for index, slot in list(self._active.items()):
            slot.cached += 1
            self._advance(index, int(next_tokens[index]))

    def _advance(self, index: int, token: int) -> None:
        """Add a sampled token to slot `index`; send what is safe to show; end if done."""
        slot = self._active[index]
        request = slot.request
        slot.context.append(token)
        slot.text += self.vocab.chars[token]
        request.completion_tokens += 1
        finish = None
        if any(slot.text.endswith(stop) for stop in self.stop_texts):
            finish = "stop"
            slot.text = cut_at_tag(slot.text, self.stop_texts)
        elif request.completion_tokens >= request.max_new_tokens:
            finish = "length"
        if finish:
            del self._active[index]
            self.replies += 1
            request.emit(slot.text[slot.emitted :], finish)
        elif request.stream:
            shown = len(slot.text) - held_back(slot.text, self._stop_prefixes)
            if shown > slot.emitted:
                request.emit(slot.text[slot.emitted : shown], None)
                slot.emitted = shown
