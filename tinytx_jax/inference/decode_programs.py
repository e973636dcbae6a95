"""The serving engine's device side: the KV caches of every slot, prefill and decode step.

`DecodePrograms` owns the slots' caches and two kinds of compiled programs: a prefill of K
prompts (padded to a power-of-two length, K a power of two) into K chosen slots, and a
decode step that advances the first B slots by a token (B a power of two covering the
busy slots: a lone request does not pay for 32). XLA:CPU's code for some B is slower than
for a larger one (docs/measured.md), so `compile_all` times each step and a step takes the
fastest B that covers the busy slots. Each samples with `sampling.sample_rows`,
so every slot has its own temperature, top-p, seed and draw number. Nothing here knows of
requests, queues or text: the scheduler (decode_slots.py) decides what runs.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax.inference.sampling import sample_rows
from tinytx_jax.model.transformer import TinyTransformer

MIN_PREFILL = 32
TOP_LOGPROBS = 20  # OpenAI's largest top_logprobs: every step reports this many


def picked_with_logprobs(logits_RxV: jax.Array, tokens_R: jax.Array, top: int):
    """The tokens, their log-probabilities under the model, and the `top` most likely
    tokens with theirs: what a request asking for logprobs is told."""
    logp_RxV = jax.nn.log_softmax(logits_RxV.astype(jnp.float32), axis=-1)
    chosen_R = jnp.take_along_axis(logp_RxV, tokens_R[:, None], axis=-1)[:, 0]
    top_logp_RxK, top_ids_RxK = jax.lax.top_k(logp_RxV, top)
    return tokens_R, chosen_R, top_ids_RxK, top_logp_RxK


def prefill_length(length: int, max_len: int) -> int:
    """The padded length of a prefill: the next power of two from 32, at most max_len."""
    return min(max(MIN_PREFILL, 1 << (length - 1).bit_length()), max_len)


def prefill_rows(count: int) -> int:
    """The rows of a prefill of `count` prompts: the next power of two."""
    return 1 << (count - 1).bit_length()


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


class DecodePrograms:
    """Caches for `slots` sequences and the compiled programs that fill and advance them."""

    def __init__(self, model: TinyTransformer, params: Any, slots: int, top_k: int = 0):
        self.model, self.params, self.slots, self.top_k = model, params, slots, top_k
        self.max_len = model.config.max_len
        self.top = min(TOP_LOGPROBS, model.config.vocab_size)
        self._prefill_jit = jax.jit(self._prefill_fn, donate_argnums=1)
        self._step_jit = jax.jit(self._step_fn, donate_argnums=1)
        self._prefills: dict[tuple[int, int], Callable[..., tuple[jax.Array, Any]]] = {}
        self._steps: dict[int, Callable[..., tuple[jax.Array, Any]]] = {}
        self._lock = threading.Lock()  # one compilation at a time, whichever thread asks
        self.cache = self._empty_cache()
        self.compiled_late = 0  # programs compiled after `compile_all`: stalls for requests
        self._fastest: dict[int, int] = {}  # busy slots -> the fastest step covering them

    def shapes(self) -> list[tuple[int, int]]:
        """Every (length, rows) a prefill can take, lone prompts first."""
        lengths = {
            prefill_length(1 << i, self.max_len) for i in range(self.max_len.bit_length() + 1)
        }
        rows = {prefill_rows(n) for n in range(1, self.slots + 1)}
        return sorted(itertools.product(lengths, rows), key=lambda shape: (shape[1], shape[0]))

    def step_buckets(self) -> list[int]:
        """The slot counts a decode step is compiled for: powers of two, and all slots."""
        return sorted({min(prefill_rows(n), self.slots) for n in range(1, self.slots + 1)})

    def step_bucket(self, busy_up_to: int) -> int:
        """The step for slots [0, busy_up_to): the fastest measured one that covers them
        (before `compile_all` has timed them, the smallest)."""
        if busy_up_to in self._fastest:
            return self._fastest[busy_up_to]
        return next(b for b in self.step_buckets() if b >= busy_up_to)

    def compile_all(self, timing_runs: int = 20) -> int:
        """Compile every program serving can run, before it serves, and time each decode
        step on idle slots; how many programs there are."""
        for shape in self.shapes():
            self.prefill_program(*shape)
        seconds = {}
        for bucket in self.step_buckets():
            self.step_program(bucket)
            inputs = self.idle_inputs(bucket)  # idle slots: overwritten by any prefill
            self.step(*inputs)
            runs = []
            for _ in range(timing_runs):
                start = time.perf_counter()
                self.step(*inputs)
                runs.append(time.perf_counter() - start)
            seconds[bucket] = float(np.median(runs))
        for busy in range(1, self.slots + 1):
            covering = [b for b in self.step_buckets() if b >= busy]
            self._fastest[busy] = min(covering, key=lambda b: (seconds[b], b))
        self.compiled_late = 0
        return len(self._prefills) + len(self._steps)

    def prefill_program(self, length: int, rows: int) -> Callable[..., tuple[jax.Array, Any]]:
        """The compiled prefill of `rows` prompts padded to `length` tokens."""
        with self._lock:
            if (length, rows) not in self._prefills:
                self.compiled_late += 1
                rows_of = lambda dtype: jax.ShapeDtypeStruct((rows,), dtype)  # noqa: E731
                self._prefills[length, rows] = self._prefill_jit.lower(
                    *_abstract((self.params, self.cache)),
                    rows_of(np.int32),
                    jax.ShapeDtypeStruct((rows, length), np.int32),
                    rows_of(np.int32),
                    *self._sampling_shapes(rows),
                ).compile()
            return self._prefills[length, rows]

    def step_program(self, bucket: int) -> Callable[..., tuple[jax.Array, Any]]:
        """The compiled decode step of the first `bucket` slots."""
        with self._lock:
            if bucket not in self._steps:
                self.compiled_late += 1
                rows_of = lambda dtype: jax.ShapeDtypeStruct((bucket,), dtype)  # noqa: E731
                self._steps[bucket] = self._step_jit.lower(
                    *_abstract((self.params, self.cache)),
                    rows_of(np.int32),
                    rows_of(np.int32),
                    *self._sampling_shapes(bucket),
                ).compile()
            return self._steps[bucket]

    @staticmethod
    def _sampling_shapes(rows: int) -> tuple[jax.ShapeDtypeStruct, ...]:
        """Seeds, draw numbers, temperatures, top-p: one per row."""
        return tuple(
            jax.ShapeDtypeStruct((rows,), dtype)
            for dtype in (np.uint32, np.int32, np.float32, np.float32)
        )

    def idle_inputs(self, n: int) -> tuple[np.ndarray, ...]:
        """Inputs of a decode step of `n` idle slots (tokens, positions, sampling)."""
        return (
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            np.zeros(n, np.uint32),
            np.zeros(n, np.int32),
            np.zeros(n, np.float32),
            np.ones(n, np.float32),
        )

    def prefill(
        self, slots_K: np.ndarray, chunks_KxT: np.ndarray, lengths_K: np.ndarray, *sampling_K
    ) -> tuple[np.ndarray, ...]:
        """Fill the caches of `slots_K` from position 0 with `chunks_KxT` (each real for
        `lengths_K` tokens) and sample each row's next token: (tokens, their logprobs,
        top token ids, top logprobs), per row."""
        program = self.prefill_program(chunks_KxT.shape[1], chunks_KxT.shape[0])
        picked, self.cache = program(
            self.params, self.cache, slots_K, chunks_KxT, lengths_K, *sampling_K
        )
        return tuple(np.asarray(a) for a in picked)

    def step(
        self, tokens_B, positions_B, seeds_B, draws_B, temps_B, top_p_B
    ) -> tuple[np.ndarray, ...]:
        """Feed each of the first B slots its last token at its position and sample each
        one's next token (B: a step bucket), with logprobs as `prefill` gives them."""
        program = self.step_program(len(tokens_B))
        picked, self.cache = program(
            self.params, self.cache, tokens_B, positions_B, seeds_B, draws_B, temps_B, top_p_B
        )
        return tuple(np.asarray(a) for a in picked)  # the one host sync per step

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

    def _step_fn(self, params, cache, tokens_B, positions_B, seeds_B, draws_B, temps_B, top_p_B):
        B = tokens_B.shape[0]
        busy = jax.tree.map(lambda c: c[:B], cache)
        logits_BxV, busy = jax.vmap(
            lambda cache_1, token, position: self._forward(params, cache_1, token[None], position)
        )(busy, tokens_B, positions_B)
        cache = jax.tree.map(
            lambda c, b: jax.lax.dynamic_update_slice_in_dim(c, b, 0, axis=0), cache, busy
        )
        tokens = sample_rows(logits_BxV[:, -1], seeds_B, draws_B, temps_B, top_p_B, self.top_k)
        return picked_with_logprobs(logits_BxV[:, -1], tokens, self.top), cache

    def _prefill_fn(self, params, cache, slots_K, chunks_KxT, lengths_K, *sampling_K):
        slot_caches = jax.tree.map(lambda c: c[slots_K], cache)
        logits_KxTxV, slot_caches = jax.vmap(
            lambda cache_1, chunk_T: self._forward(params, cache_1, chunk_T, 0)
        )(slot_caches, chunks_KxT)
        last_KxV = jnp.take_along_axis(logits_KxTxV, (lengths_K - 1)[:, None, None], axis=1)[:, 0]
        cache = jax.tree.map(lambda c, new: c.at[slots_K].set(new), cache, slot_caches)
        tokens = sample_rows(last_KxV, *sampling_K, self.top_k)
        return picked_with_logprobs(last_KxV, tokens, self.top), cache
