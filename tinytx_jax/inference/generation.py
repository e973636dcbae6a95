"""Text generation: a KV-cached decode loop that runs on the device and stops by itself.

The prompt is right-padded to a bucket of a few fixed lengths (so prompts of different
lengths share compilations) and prefilled in one forward pass that fills the KV cache; then a
`lax.while_loop` samples one token per iteration, feeding it through the cached forward,
until a stop text (for chat: any of the dialog tags, normally `</assistant>`) has been
produced or `max_new_tokens` is reached. Padding is harmless:
a padded position is always overwritten before any query may attend to it.

Once prompt + reply outgrow `max_len`, each further token is predicted from the most
recent `max_len` tokens by a full forward pass, exactly as the uncached seed did.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax.inference.sampling import SamplingConfig, pick, usable_stop_texts
from tinytx_jax.model.transformer import TinyTransformer, empty_kv_cache
from tinytx_jax.text.dialogs import TAGS, cut_at_tag
from tinytx_jax.text.vocabulary import Vocabulary

MIN_BUCKET = 32
BUCKET_STEP = 32


def bucket_length(length: int, max_len: int) -> int:
    """The padded prompt length: a multiple of 32, capped at max_len.

    Steps of 32 keep the prefill (which runs over the whole bucket) close to the prompt's
    real length; each bucket compiles once, on first use.
    """
    bucket = max(MIN_BUCKET, -(-length // BUCKET_STEP) * BUCKET_STEP)
    return min(bucket, max_len)


def _ends_with(buffer: jax.Array, end: jax.Array, tag: jax.Array) -> jax.Array:
    # Clamped at 0 by hand: before the tag fits, the window reads the prompt (no match).
    window = jax.lax.dynamic_slice_in_dim(buffer, jnp.maximum(end - tag.shape[0], 0), tag.shape[0])
    return jnp.all(window == tag)


def _generated_a_stop(
    buffer: jax.Array, end: jax.Array, prompt_len: jax.Array, stops: tuple[jax.Array, ...]
) -> jax.Array:
    """Whether the new tokens end with one of `stops` (the prompt's own tags do not count)."""
    done = jnp.bool_(False)
    for tag in stops:
        done = done | (_ends_with(buffer, end, tag) & (end - prompt_len >= tag.shape[0]))
    return done


@functools.cache  # every Generator of the same model shares it
def make_prompt_prefill(model: TinyTransformer, bucket: int) -> Callable[..., Any]:
    """A jitted `(params, cache, prompt, start, prompt_len) -> (logits_V, cache)`:
    `prompt[start : start + bucket]` prefilled on top of a cache that holds positions
    `[0, start)`, and the logits after the prompt's last token. Only this small program
    is compiled per bucket (and once for a shared prefix, prefilled alone); the decode
    loop that follows is one for every bucket."""

    def prefill(params, cache, buffer, start, prompt_len):
        # The buffer holds max_len + max_new_tokens, so the bucket never needs clamping.
        chunk = jax.lax.dynamic_slice_in_dim(buffer, start, bucket)
        logits, variables = model.apply(
            {"params": params, "cache": cache}, chunk[None], decode_start=start, mutable=["cache"]
        )
        return logits[0, prompt_len - start - 1], variables["cache"]

    return jax.jit(prefill)


@functools.cache  # every Generator of the same model and sampling shares it
def make_decode(
    model: TinyTransformer,
    cfg: SamplingConfig,
    stop_tokens: tuple[tuple[int, ...], ...],
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """A jitted `(params, cache, buffer, logits, prompt_len, seed) -> (buffer, end)`: the
    reply decoded after a prefilled prompt (`logits` are those after its last token).

    The n-th new token is drawn with `fold_in(key(seed), n)`, as the serving engine draws
    a request's n-th token, so a seed gives the same reply in the REPL and over HTTP.
    `cfg.seed` is not read here (the seed is an argument): key this on `seed=0`.
    """
    max_len = model.config.max_len
    stops = tuple(jnp.asarray(tokens, jnp.int32) for tokens in stop_tokens)

    def cached_logits(params, cache, token, position):
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            token[None, None],
            decode_start=position,
            mutable=["cache"],
        )
        return logits[0, -1], variables["cache"]

    def window_logits(params, cache, buffer, end):
        # end >= max_len here, so the slice is never clamped.
        window = jax.lax.dynamic_slice_in_dim(buffer, end - max_len, max_len)
        return model.apply({"params": params}, window[None])[0, -1], cache

    def decode(params, cache, buffer, first_logits, prompt_len, seed):
        key = jax.random.key(seed)

        def step(carry, next_logits):
            end, logits, cache, buffer, key, _ = carry
            token = pick(logits, jax.random.fold_in(key, end - prompt_len), cfg)
            buffer = buffer.at[end].set(token)
            end = end + 1
            done = _generated_a_stop(buffer, end, prompt_len, stops)
            logits, cache = next_logits(cache, token, buffer, end)
            return end, logits, cache, buffer, key, done

        def cached(cache, token, buffer, end):
            return cached_logits(params, cache, token, end - 1)

        def windowed(cache, token, buffer, end):
            return window_logits(params, cache, buffer, end)

        def more(carry, fits: bool):
            end, _, _, _, _, done = carry
            in_cache = end < max_len if fits else True
            return ~done & (end - prompt_len < cfg.max_new_tokens) & in_cache

        carry = (prompt_len, first_logits, cache, buffer, key, False)
        # While the text fits in max_len, each token goes through the KV cache; beyond
        # that (rare: long histories) each token needs a full forward of the last max_len.
        carry = jax.lax.while_loop(lambda c: more(c, True), lambda c: step(c, cached), carry)
        carry = jax.lax.while_loop(lambda c: more(c, False), lambda c: step(c, windowed), carry)
        end, _, _, buffer, _, _ = carry
        return buffer, end

    return jax.jit(decode, donate_argnums=2)  # the buffer is written in place


class Generator:
    """Turns prompt text into reply text with a trained model: one decode loop, and a
    prefill compiled once per prompt bucket.

    `cache_prefix(text)` keeps the KV cache of a prefix that every prompt shares (the
    system prompt), so each reply only prefills what follows it. Decoding stops at any of
    `stop_texts` (none: free-running text).
    """

    def __init__(
        self,
        model: TinyTransformer,
        params: Any,
        vocab: Vocabulary,
        cfg: SamplingConfig,
        stop_texts: tuple[str, ...] = TAGS,
    ):
        self.model, self.params, self.vocab, self.cfg = model, params, vocab, cfg
        self.stop_texts = usable_stop_texts(stop_texts, vocab)
        self.stop_tokens = tuple(
            tuple(int(t) for t in vocab.encode(text)) for text in self.stop_texts
        )
        self.calls = 0  # the c-th reply (from 0) samples with seed cfg.seed + c
        self._lock = threading.Lock()
        self._empty_cache: Any = None
        self._prefix_tokens = np.zeros(0, np.int32)
        self._prefix_cache: Any = None

    @functools.cached_property
    def _decode(self) -> Callable[..., tuple[jax.Array, jax.Array]]:
        return make_decode(self.model, dataclasses.replace(self.cfg, seed=0), self.stop_tokens)

    def cache_prefix(self, text: str) -> None:
        """Remember a shared prompt prefix; its KV cache is computed on first use."""
        self._prefix_tokens = self.vocab.encode(text)
        self._prefix_cache = None

    def _empty(self) -> Any:
        if self._empty_cache is None:
            self._empty_cache = empty_kv_cache(self.model, self.params)
        return self._empty_cache

    def _start_and_cache(self, prompt: np.ndarray) -> tuple[int, Any]:
        """Where the prefill starts, and the cache of everything before it."""
        prefix, max_len = self._prefix_tokens, self.model.config.max_len
        shares_prefix = len(prefix) and len(prompt) > len(prefix)
        shares_prefix = shares_prefix and np.array_equal(prompt[: len(prefix)], prefix)
        rest = len(prompt) - len(prefix)
        if not shares_prefix or len(prefix) + bucket_length(rest, max_len) > max_len:
            return 0, self._empty()
        if self._prefix_cache is None:
            prefill = make_prompt_prefill(self.model, len(prefix))
            _, self._prefix_cache = prefill(self.params, self._empty(), prefix, 0, len(prefix))
        return len(prefix), self._prefix_cache

    def _run(self, prompt: np.ndarray, seed: int) -> tuple[np.ndarray, bool]:
        max_len = self.model.config.max_len
        cut_prompt = len(prompt) > max_len
        prompt = prompt[-max_len:]
        buffer = np.zeros(max_len + self.cfg.max_new_tokens, np.int32)
        buffer[: len(prompt)] = prompt
        with self._lock:  # a warm-up compile in another thread finishes first
            start, cache = self._start_and_cache(prompt)
            bucket = bucket_length(len(prompt) - start, max_len - start)
            prefill = make_prompt_prefill(self.model, bucket)
            buffer = jnp.asarray(buffer)  # sent to the device once, read by both programs
            logits, cache = prefill(self.params, cache, buffer, start, len(prompt))
            out, end = self._decode(
                self.params, cache, buffer, logits, len(prompt), np.uint32(seed % 2**32)
            )
        # Host sync: the reply's tokens come back once, after the whole decode loop.
        end = int(end)
        # Cut: the prompt did not fit, or the reply went on past max_len (the last
        # tokens were then predicted from the most recent max_len only).
        return np.asarray(out)[len(prompt) : end], cut_prompt or end > max_len

    def generate_tokens(self, prompt: np.ndarray) -> tuple[np.ndarray, bool]:
        """New token ids after `prompt`, and whether the context had to be cut to fit."""
        self.calls += 1
        return self._run(prompt, self.cfg.seed + self.calls - 1)

    def warm_up(self, prompt_text: str) -> None:
        """Compile for prompts like `prompt_text` without drawing from the sample stream."""
        self._run(self.vocab.encode(prompt_text), 0)

    def reply(self, prompt_text: str) -> tuple[str, bool]:
        """The reply to `prompt_text`, cut before the first stop text, and the truncation
        flag."""
        tokens, truncated = self.generate_tokens(self.vocab.encode(prompt_text))
        return cut_at_tag(self.vocab.decode(tokens), self.stop_texts), truncated


def generate_uncached(
    model: TinyTransformer,
    params: Any,
    prompt: np.ndarray,
    max_new_tokens: int,
    stops: tuple[tuple[int, ...], ...],
) -> np.ndarray:
    """The seed's way, as a reference: a full forward over the last max_len tokens per token.

    The window is right-padded to max_len so that one compilation serves every length;
    causal masking keeps the padding out of the logits that are read.
    """
    max_len = model.config.max_len
    forward = jax.jit(lambda p, window, last: model.apply({"params": p}, window)[last])
    tokens = list(prompt)
    for _ in range(max_new_tokens):
        window = np.zeros(max_len, np.int32)
        recent = tokens[-max_len:]
        window[: len(recent)] = recent
        tokens.append(int(jnp.argmax(forward(params, window, len(recent) - 1))))
        new = len(tokens) - len(prompt)
        if any(tuple(tokens[-len(stop) :]) == stop and new >= len(stop) for stop in stops):
            break
    return np.asarray(tokens[len(prompt) :], np.int32)
