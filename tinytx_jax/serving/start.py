"""--mode=serve: load a workdir's model, compile its decoding, and serve it over HTTP."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tinytx_jax import configuration
from tinytx_jax.inference import chat, decode_slots, trained
from tinytx_jax.serving import openai_api, server, service
from tinytx_jax.text import dialogs

MAX_REPLY_TOKENS = 4096  # the largest max_tokens a request may ask for


@dataclasses.dataclass(frozen=True)
class Listen:
    """Where --mode=serve listens, and the API key it requires (None: none)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None


def serve_checkpoint(
    use: configuration.UseConfig,
    serving: configuration.ServeConfig,
    workdir: str,
    listen: Listen,
    to_stderr: Callable[[str], None],
) -> None:
    """Load the workdir's chat model, compile its decoding, and serve it over HTTP."""
    sock = server.bound_socket(listen.host, listen.port)
    model = trained.load_trained(workdir, use.checkpoint, log=to_stderr, member=use.member)
    to_stderr(
        f"(loaded the {use.checkpoint} checkpoint of {workdir}: epoch {model.epoch}, "
        f"val_loss {model.meta['metrics']['val_loss']:.4f}; compiling {serving.serve_slots} "
        "decode slots)"
    )
    sampling = chat.sampling_config(use)
    start = time.perf_counter()
    engine = decode_slots.DecodeSlots(
        model.model,
        model.params,
        model.vocab,
        slots=serving.serve_slots,
        top_k=sampling.top_k,
        stop_texts=() if model.plain_text else dialogs.TAGS,  # text: only `stop` ends it
        warm_up=True,
        max_waiting=serving.serve_queue,
    )
    to_stderr(
        f"(compiled {engine.programs.compiled_count} programs in "
        f"{time.perf_counter() - start:.1f} s: ready; {engine.programs.left_to_compile} more "
        "compile in the background, /health counts them)"
    )
    defaults = openai_api.Defaults(
        max_tokens=use.max_new_tokens,
        max_tokens_limit=MAX_REPLY_TOKENS,
        temperature=sampling.temperature,
        top_p=use.top_p,
    )
    serve_settings = service.ServeSettings(
        listen.api_key, defaults, use.system_prompt, timeout_s=serving.serve_timeout_s
    )
    name = Path(workdir).expanduser().resolve().name
    status = server.serve(service.ChatService(model, engine, serve_settings, name), sock)
    if status:
        sys.stdout.flush()
        os._exit(status)  # the engine failed: a supervisor restarts the server
