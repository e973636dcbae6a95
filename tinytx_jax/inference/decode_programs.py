"""The serving engine's device side: the KV caches of every slot, prefill and decode step.

`DecodePrograms` owns the slots' caches and two kinds of compiled programs: a prefill of K
prompts (padded to a power-of-two length, K a power of two) into K chosen slots, and a
decode step that advances the first B slots by a token (B a power of two covering the
busy slots: a lone request does not pay for 32). Each samples with `sampling.sample_rows`,
so every slot has its own temperature, top-p, seed and draw number. Nothing here knows of
requests, queues or text: the scheduler (decode_slots.py) decides what runs.

A cold start compiles the two programs that can serve anything (`compile_ready`: one
prompt of any length, a step of every slot) and the rest in the background
(`compile_in_background`), so a server answers within seconds; meanwhile the scheduler
asks `prefill_shape` and `step_bucket` for the best compiled program that fits. XLA:CPU's
code for some B is slower than for a larger one (docs/measured.md), so once every step is
compiled each is timed and a step takes the fastest B that covers the busy slots.
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
from tinytx_jax.model.transformer import TinyTransformer, empty_kv_cache

MIN_PREFILL = 32
TOP_LOGPROBS = 20  # OpenAI's largest top_logprobs: every step reports this many
Program = Callable[..., tuple[jax.Array, Any]]
PrefillKey = tuple[str, int, int]  # ("prefill", length, rows)
StepKey = tuple[str, int]  # ("step", slots)


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
    """Caches for `slots` sequences and the compiled programs that fill and advance them.

    Before `compile_ready`, a program is compiled the first time it is asked for (tests,
    one-off use); after it, the scheduler is given compiled programs only."""

    def __init__(self, model: TinyTransformer, params: Any, slots: int, top_k: int = 0):
        self.model, self.params, self.slots, self.top_k = model, params, slots, top_k
        self.max_len = model.config.max_len
        self.top = min(TOP_LOGPROBS, model.config.vocab_size)
        self._prefill_jit = jax.jit(self._prefill_fn, donate_argnums=1)
        self._step_jit = jax.jit(self._step_fn, donate_argnums=1)
        self._compiled: dict[PrefillKey | StepKey, Program] = {}  # grows from any thread
        self.cache = self._empty_cache()
        self.compiled_late = 0  # programs a request had to wait for: stalls
        self._fastest: dict[int, int] = {}  # busy slots -> the fastest step covering them
        self._only_compiled = False  # set by `compile_ready`
        self._background: threading.Thread | None = None
        self._stopping = threading.Event()

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

    def every_program(self) -> list[PrefillKey | StepKey]:
        """Every program serving can run: the ready set first, then the steps and the
        prefills in the order a request would miss them most."""
        ready = [("prefill", self.max_len, 1), ("step", self.slots)]
        steps = [("step", bucket) for bucket in self.step_buckets()]
        prefills = [("prefill", length, rows) for length, rows in self.shapes()]
        return list(dict.fromkeys([*ready, *steps, *prefills]))

    @property
    def compiled_count(self) -> int:
        return len(self._compiled)

    @property
    def left_to_compile(self) -> int:
        return len(self.every_program()) - len(self._compiled)

    def compile_ready(self) -> int:
        """Compile the programs that can serve any request (a prefill of one prompt of any
        length, the step of every slot); from now on the scheduler is only given compiled
        programs. How many there are."""
        for key in self.every_program()[:2]:
            self._ensure(key)
        self._only_compiled = True
        return len(self._compiled)

    def compile_in_background(self, timing_runs: int = 20) -> None:
        """Compile every other program in a thread of its own, then time the steps."""
        self._background = threading.Thread(
            target=self.compile_rest, args=(timing_runs,), name="compile-rest", daemon=True
        )
        self._background.start()

    def compile_rest(self, timing_runs: int = 20) -> None:
        """Compile every program not compiled yet, then time each decode step on idle
        slots of a cache of its own, so that a step takes the fastest that covers."""
        for key in self.every_program():
            if self._stopping.is_set():
                return
            self._ensure(key)
        cache, seconds = self._empty_cache(), {}
        for bucket in self.step_buckets():
            program, inputs, runs = self._ensure(("step", bucket)), self.idle_inputs(bucket), []
            for _ in range(timing_runs + 1):  # the first run is not counted
                start = time.perf_counter()
                picked, cache = program(self.params, cache, *inputs)
                jax.block_until_ready(picked)
                runs.append(time.perf_counter() - start)
            seconds[bucket] = float(np.median(runs[1:]))
        self._fastest = {
            busy: min((b for b in seconds if b >= busy), key=lambda b: (seconds[b], b))
            for busy in range(1, self.slots + 1)
        }

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Whether every program is compiled and timed (waiting up to `timeout` s)."""
        if self._background is not None:
            self._background.join(timeout)
        return bool(self._fastest)

    def stop_compiling(self) -> None:
        """Stop the background compiling after the program it is on."""
        self._stopping.set()
        if self._background is not None:
            self._background.join(timeout=30)

    def prefill_shape(self, longest: int, count: int) -> tuple[int, int]:
        """The (length, rows) of the prefill for `count` prompts, the longest `longest`
        tokens: their own bucket if compiled, else the compiled one that covers them with
        the fewest rows, else the one with the most rows (the rest wait for the next)."""
        wanted = (prefill_length(longest, self.max_len), prefill_rows(count))
        if not self._only_compiled or ("prefill", *wanted) in self._compiled:
            return wanted
        fitting = [key[1:] for key in list(self._compiled) if key[0] == "prefill"]
        fitting = [shape for shape in fitting if shape[0] >= wanted[0]]
        covering = [shape for shape in fitting if shape[1] >= count]
        if covering:
            return min(covering, key=lambda shape: (shape[1], shape[0]))
        return max(fitting, key=lambda shape: (shape[1], -shape[0]))

    def step_bucket(self, busy_up_to: int) -> int:
        """The step for slots [0, busy_up_to): the fastest measured one that covers them;
        before the steps are timed, the smallest compiled one."""
        if self._fastest:
            return self._fastest[busy_up_to]
        covering = [b for b in self.step_buckets() if b >= busy_up_to]
        if self._only_compiled:
            covering = [b for b in covering if ("step", b) in self._compiled]
        return covering[0]

    def _ensure(self, key: PrefillKey | StepKey) -> Program:
        """The compiled program of `key`, compiled now if it is not yet. Two threads may
        compile the same one at once; the first to finish is kept."""
        program = self._compiled.get(key)
        if program is None:
            kind, *shape = key
            program = self._compiled.setdefault(key, self._lower(kind, *shape).compile())
        return program

    def _lower(self, kind: str, *shape: int) -> jax.stages.Lowered:
        rows = shape[-1]
        rows_of = lambda dtype: jax.ShapeDtypeStruct((rows,), dtype)  # noqa: E731
        caches = _abstract((self.params, self.cache))
        sampling = self._sampling_shapes(rows)
        if kind == "step":
            return self._step_jit.lower(*caches, rows_of(np.int32), rows_of(np.int32), *sampling)
        chunks = jax.ShapeDtypeStruct((rows, shape[0]), np.int32)
        return self._prefill_jit.lower(
            *caches, rows_of(np.int32), chunks, rows_of(np.int32), *sampling
        )

    def _program(self, key: PrefillKey | StepKey) -> Program:
        """The program a request runs: compiled on the spot (a stall, counted) if need be."""
        if key not in self._compiled:
            self.compiled_late += 1
        return self._ensure(key)

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
        program = self._program(("prefill", *chunks_KxT.shape[::-1]))
        picked, self.cache = program(
            self.params, self.cache, slots_K, chunks_KxT, lengths_K, *sampling_K
        )
        return tuple(np.asarray(a) for a in picked)

    def step(
        self, tokens_B, positions_B, seeds_B, draws_B, temps_B, top_p_B
    ) -> tuple[np.ndarray, ...]:
        """Feed each of the first B slots its last token at its position and sample each
        one's next token (B: a step bucket), with logprobs as `prefill` gives them."""
        program = self._program(("step", len(tokens_B)))
        picked, self.cache = program(
            self.params, self.cache, tokens_B, positions_B, seeds_B, draws_B, temps_B, top_p_B
        )
        return tuple(np.asarray(a) for a in picked)  # the one host sync per step

    def _empty_cache(self) -> Any:
        return empty_kv_cache(self.model, self.params, rows=self.slots)

    def _forward(self, params, cache, tokens_BxT, starts):
        """The model on `B` rows of the caches, from `starts` (one for all, or a row's own)."""
        logits_BxTxV, variables = self.model.apply(
            {"params": params, "cache": cache}, tokens_BxT, decode_start=starts, mutable=["cache"]
        )
        return logits_BxTxV, variables["cache"]

    def _step_fn(self, params, cache, tokens_B, positions_B, seeds_B, draws_B, temps_B, top_p_B):
        """The first B slots forward by one token, each at its own position, as one batch
        (the model writes their keys and values into the caches of every slot in place)."""
        logits_Bx1xV, cache = self._forward(params, cache, tokens_B[:, None], positions_B)
        tokens = sample_rows(logits_Bx1xV[:, -1], seeds_B, draws_B, temps_B, top_p_B, self.top_k)
        return picked_with_logprobs(logits_Bx1xV[:, -1], tokens, self.top), cache

    def _prefill_fn(self, params, cache, slots_K, chunks_KxT, lengths_K, *sampling_K):
        slot_caches = jax.tree.map(lambda c: c[slots_K], cache)
        logits_KxTxV, slot_caches = self._forward(params, slot_caches, chunks_KxT, 0)
        last_KxV = jnp.take_along_axis(logits_KxTxV, (lengths_K - 1)[:, None, None], axis=1)[:, 0]
        cache = jax.tree.map(lambda c, new: c.at[slots_K].set(new), cache, slot_caches)
        tokens = sample_rows(last_KxV, *sampling_K, self.top_k)
        return picked_with_logprobs(last_KxV, tokens, self.top), cache
