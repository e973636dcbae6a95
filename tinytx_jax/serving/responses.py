"""Completions responses in OpenAI's shapes: a whole reply, a stream chunk, usage."""

from __future__ import annotations

import secrets
import time


def completion_id(prefix: str = "chatcmpl-") -> str:
    return prefix + secrets.token_hex(12)


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    ident: str,
    model: str,
    text: str,
    finish_reason: str,
    usage: dict,
    notices: list[str],
    logprobs: list[dict] | None = None,
) -> dict:
    """A whole (not streamed) reply; `notices` says what was dropped or cut, if anything."""
    body = {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }
    if notices:
        body["notices"] = notices
    return body


def chunk_body(
    ident: str,
    model: str,
    delta: dict,
    finish_reason: str | None = None,
    usage: dict | None = None,
    notices: list[str] | None = None,
    logprobs: list[dict] | None = None,
) -> dict:
    """One server-sent event of a streamed reply; the usage chunk has no choices."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs, "refusal": None}
    choices = [] if usage else [choice]
    body = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage:
        body["usage"] = usage
    if notices:
        body["notices"] = notices
    return body


def text_body(
    ident: str,
    model: str,
    text: str,
    finish_reason: str | None,
    usage: dict | None = None,
    notices: list[str] | None = None,
) -> dict:
    """A text completion, whole or one chunk of a stream (the same shape in OpenAI's API)."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    body = {
        "id": ident,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
    if usage:
        body["usage"] = usage
    if notices:
        body["notices"] = notices
    return body
