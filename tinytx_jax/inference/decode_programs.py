"""The serving engine's device side: the KV caches of every slot, prefill and decode step.

`DecodePrograms` owns the slots' caches and two kinds of compiled programs: a prefill of K
prompts (padded to a power-of-two length, K a power of two) into K chosen slots, and one
decode step that advances every slot by a token. Each samples with `sampling.sample_rows`,
so every slot has its own temperature, top-p, seed and draw number. Nothing here knows of
requests, queues or text: the scheduler (decode_slots.py) decides what runs.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax.inference.sampling import sample_rows
from tinytx_jax.model import TinyTransformer

MIN_PREFILL = 32


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
        self._prefill_jit = jax.jit(self._prefill_fn, donate_argnums=1)
        self._prefills: dict[tuple[int, int], Callable[..., tuple[jax.Array, Any]]] = {}
        self._lock = threading.Lock()  # the warm-up and the engine thread compile alike
        self._step = jax.jit(self._step_fn, donate_argnums=1)
        self.cache = self._empty_cache()

    def shapes(self) -> list[tuple[int, int]]:
        """Every (length, rows) a prefill can take, lone prompts first."""
        lengths = {
            prefill_length(1 << i, self.max_len) for i in range(self.max_len.bit_length() + 1)
        }
        rows = {prefill_rows(n) for n in range(1, self.slots + 1)}
        return sorted(itertools.product(lengths, rows), key=lambda shape: (shape[1], shape[0]))

    def prefill_program(self, length: int, rows: int) -> Callable[..., tuple[jax.Array, Any]]:
        """The compiled prefill of `rows` prompts padded to `length` tokens."""
        with self._lock:
            if (length, rows) not in self._prefills:
                ints, rows_of = np.int32, lambda dtype: jax.ShapeDtypeStruct((rows,), dtype)
                self._prefills[length, rows] = self._prefill_jit.lower(
                    *_abstract((self.params, self.cache)),
                    rows_of(ints),
                    jax.ShapeDtypeStruct((rows, length), ints),
                    rows_of(ints),
                    rows_of(np.uint32),
                    rows_of(ints),
                    rows_of(np.float32),
                    rows_of(np.float32),
                ).compile()
            return self._prefills[length, rows]

    def compile_step(self) -> None:
        """Compile the decode step (it runs the first time, on empty slots)."""
        self.step(*self.idle_inputs())

    def idle_inputs(self) -> tuple[np.ndarray, ...]:
        """Inputs of a decode step in which no slot is busy (tokens, positions, sampling)."""
        n = self.slots
        return (np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, np.uint32),
                np.zeros(n, np.int32), np.zeros(n, np.float32), np.ones(n, np.float32))  # fmt: skip

    def prefill(
        self, slots_K: np.ndarray, chunks_KxT: np.ndarray, lengths_K: np.ndarray, *sampling_K
    ) -> np.ndarray:
        """Fill the caches of `slots_K` from position 0 with `chunks_KxT` (each real for
        `lengths_K` tokens) and sample each row's next token."""
        program = self.prefill_program(chunks_KxT.shape[1], chunks_KxT.shape[0])
        tokens, self.cache = program(
            self.params, self.cache, slots_K, chunks_KxT, lengths_K, *sampling_K
        )
        return np.asarray(tokens)

    def step(self, tokens_N, positions_N, seeds_N, draws_N, temps_N, top_p_N) -> np.ndarray:
        """Feed each slot its last token at its position; sample every slot's next token."""
        tokens, self.cache = self._step(
            self.params, self.cache, tokens_N, positions_N, seeds_N, draws_N, temps_N, top_p_N
        )
        return np.asarray(tokens)  # the one host sync per step

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
