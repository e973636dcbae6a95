"""A text run's head start: the end-of-run sample's decode loop compiled while it trains."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp

from tinytx_jax import configuration
from tinytx_jax.inference import chat, generation, trained
from tinytx_jax.inference.text_sample import default_prompt
from tinytx_jax.training.task import Task


def compile_sample_early(
    use: configuration.UseConfig, prompt: str | None
) -> Callable[[Task], threading.Thread]:
    """An `on_task` that compiles the end-of-run sample's decode loop in a thread while the
    run trains. The compilation cache keeps the program, and the sample after training
    finds it there: about 4 s of a text run's first wall on a machine. The parameters are
    zeros placed as a restored checkpoint's are, or the program would not be the same."""

    def compile_decode(task: Task) -> None:
        params = jax.tree.map(
            lambda s: jax.device_put(jnp.zeros(s.shape, s.dtype), s.sharding),
            trained.model_abstract_params(task.model),
        )
        sampling = chat.sampling_config(use, plain_text=True)
        generator = generation.Generator(task.model, params, task.vocab, sampling, stop_texts=())
        generator.warm_up(prompt if prompt is not None else default_prompt(task.vocab))

    def start(task: Task) -> threading.Thread:
        def head_start() -> None:
            with contextlib.suppress(Exception):  # only a head start: the sample compiles anyway
                compile_decode(task)

        thread = threading.Thread(target=head_start, daemon=True)
        thread.start()
        return thread

    return start
