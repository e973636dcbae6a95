"""Text generation: a KV-cached decode loop that runs on the device and stops by itself.

The prompt is right-padded to a bucket of a few fixed lengths (so prompts of different
lengths share compilations) and prefilled in one forward pass that fills the KV cache; then a
`lax.while_loop` samples one token per iteration, feeding it through the cached forward,
until the end tag has been produced or `max_new_tokens` is reached. Padding is harmless:
a padded position is always overwritten before any query may attend to it.

Once prompt + reply outgrow `max_len`, each further token is predicted from the most
recent `max_len` tokens by a full forward pass, exactly as the uncached seed did.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax.data import ASSISTANT_END, Vocabulary
from tinytx_jax.model import TinyTransformer

MIN_BUCKET = 64
BUCKET_STEP = 32


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How tokens are picked; temperature 0 means greedy (the seed's decoding)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 200


def sample_logits(logits: jax.Array, key: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """One token id from `[vocab]` logits: greedy, or tempered with top-k / top-p."""
    if cfg.temperature == 0.0 or cfg.top_k == 1:
        return jnp.argmax(logits).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, cfg.top_k)[0][-1]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if cfg.top_p < 1.0:
        order = jnp.argsort(-logits)
        probs = jax.nn.softmax(logits[order])
        mass_before = jnp.cumsum(probs) - probs
        keep_sorted = mass_before < cfg.top_p  # always keeps the most likely token
        keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return jax.random.categorical(key, logits).astype(jnp.int32)


def bucket_length(length: int, max_len: int) -> int:
    """The padded prompt length: a multiple of 32 (at least 64), capped at max_len.

    Steps of 32 keep the prefill (which runs over the whole bucket) close to the prompt's
    real length; each bucket compiles once, on first use.
    """
    bucket = max(MIN_BUCKET, -(-length // BUCKET_STEP) * BUCKET_STEP)
    return min(bucket, max_len)


def _ends_with(buffer: jax.Array, end: jax.Array, tag: jax.Array) -> jax.Array:
    window = jax.lax.dynamic_slice_in_dim(buffer, jnp.maximum(end - tag.shape[0], 0), tag.shape[0])
    return jnp.all(window == tag)


def make_generate(
    model: TinyTransformer, cfg: SamplingConfig, bucket: int, stop_tokens: tuple[int, ...]
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """A jitted `(params, padded_prompt[bucket], prompt_len, key, call) -> (buffer, end)`.

    `call` numbers the calls: each draws its samples from `fold_in(key, call)`.
    """
    max_len = model.config.max_len
    buffer_len = max(bucket + cfg.max_new_tokens, max_len)
    tag = jnp.asarray(stop_tokens, jnp.int32)

    def cached_logits(params, cache, token, position):
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            token[None, None],
            decode_start=position,
            mutable=["cache"],
        )
        return logits[0, -1], variables["cache"]

    def window_logits(params, cache, buffer, end):
        window = jax.lax.dynamic_slice_in_dim(buffer, end - max_len, max_len)
        return model.apply({"params": params}, window[None])[0, -1], cache

    def generate(params, prompt, prompt_len, key, call):
        key = jax.random.fold_in(key, call)
        logits, variables = model.apply(
            {"params": params}, prompt[None], decode_start=0, mutable=["cache"]
        )
        buffer = jnp.zeros(buffer_len, jnp.int32).at[:bucket].set(prompt)

        def step(carry, next_logits):
            end, logits, cache, buffer, key, _ = carry
            key, sample_key = jax.random.split(key)
            token = sample_logits(logits, sample_key, cfg)
            buffer = buffer.at[end].set(token)
            end = end + 1
            done = _ends_with(buffer, end, tag) if stop_tokens else jnp.bool_(False)
            done = done & (end - prompt_len >= tag.shape[0])
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

        carry = (prompt_len, logits[0, prompt_len - 1], variables["cache"], buffer, key, False)
        # While the text fits in max_len, each token goes through the KV cache; beyond
        # that (rare: long histories) each token needs a full forward of the last max_len.
        carry = jax.lax.while_loop(lambda c: more(c, True), lambda c: step(c, cached), carry)
        carry = jax.lax.while_loop(lambda c: more(c, False), lambda c: step(c, windowed), carry)
        end, _, _, buffer, _, _ = carry
        return buffer, end

    return jax.jit(generate)


class Generator:
    """Turns prompt text into reply text with a trained model; compiles once per bucket."""

    def __init__(
        self,
        model: TinyTransformer,
        params: Any,
        vocab: Vocabulary,
        cfg: SamplingConfig,
        stop_text: str = ASSISTANT_END,
    ):
        self.model, self.params, self.vocab, self.cfg = model, params, vocab, cfg
        self.stop_text = stop_text
        stop_known = stop_text and not vocab.unknown_chars(stop_text)
        self.stop_tokens = tuple(int(t) for t in vocab.encode(stop_text)) if stop_known else ()
        self.key = jax.random.PRNGKey(cfg.seed)
        self.calls = 0
        self._lock = threading.Lock()
        self._compiled: dict[int, Callable[..., tuple[jax.Array, jax.Array]]] = {}

    def compiled(self, bucket: int) -> Callable[..., tuple[jax.Array, jax.Array]]:
        """The jitted decode loop for prompts padded to `bucket` tokens."""
        if bucket not in self._compiled:
            self._compiled[bucket] = make_generate(self.model, self.cfg, bucket, self.stop_tokens)
        return self._compiled[bucket]

    def _run(self, prompt: np.ndarray, call: int) -> tuple[np.ndarray, bool]:
        max_len = self.model.config.max_len
        truncated = len(prompt) + self.cfg.max_new_tokens > max_len
        prompt = prompt[-max_len:]
        bucket = bucket_length(len(prompt), max_len)
        padded = np.zeros(bucket, np.int32)
        padded[: len(prompt)] = prompt
        with self._lock:  # a warm-up compile in another thread finishes first
            buffer, end = self.compiled(bucket)(self.params, padded, len(prompt), self.key, call)
        return np.asarray(buffer)[len(prompt) : int(end)], truncated

    def generate_tokens(self, prompt: np.ndarray) -> tuple[np.ndarray, bool]:
        """New token ids after `prompt`, and whether the prompt had to be cut to fit."""
        self.calls += 1
        return self._run(prompt, self.calls)

    def warm_up(self, prompt_text: str) -> None:
        """Compile for prompts like `prompt_text` without drawing from the sample stream."""
        self._run(self.vocab.encode(prompt_text), 0)

    def reply(self, prompt_text: str) -> tuple[str, bool]:
        """The reply to `prompt_text`, cut before the end tag, and the truncation flag."""
        tokens, truncated = self.generate_tokens(self.vocab.encode(prompt_text))
        text = self.vocab.decode(tokens)
        if self.stop_text:
            text = text.split(self.stop_text, 1)[0]
        return text, truncated


def generate_uncached(
    model: TinyTransformer, params: Any, prompt: np.ndarray, max_new_tokens: int, stop: tuple
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
        if stop and tuple(tokens[-len(stop) :]) == stop and len(tokens) - len(prompt) >= len(stop):
            break
    return np.asarray(tokens[len(prompt) :], np.int32)
