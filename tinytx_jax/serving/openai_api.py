"""The OpenAI chat- and text-completions formats: requests checked field by field.

Pure functions, no server: `parse_chat_request` turns a decoded JSON body into a
`ChatRequest` (`parse_completion_request`: a `CompletionRequest`) or raises `ApiError`
(a 4xx status and an OpenAI-shaped `error` body).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tinytx_jax.text import dialogs

ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """A request the server refuses: HTTP `status` and the OpenAI error fields."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = (
            message,
            param,
            status,
            kind,
            code,
        )
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code=None
) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampled:
    """What chat and text completions both ask for: how much, how to sample, when to stop."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stream: bool
    include_usage: bool
    stop: tuple[str, ...] = ()  # the reply ends before the first of these it produces
    top_logprobs: int | None = None  # set (logprobs=true): each token's logprob, this many more


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatRequest(Sampled):
    """What a chat-completions request asks for, checked."""

    user: str
    history: tuple[dialogs.Turn, ...]
    system: str | None  # None: the server's system prompt


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompletionRequest(Sampled):
    """What a text-completions request asks for, checked: a text to continue (logprobs
    are offered for chat completions only)."""

    prompt: str


@dataclasses.dataclass(frozen=True)
class Defaults:
    """The server's sampling settings and limits, from its flags and config."""

    max_tokens: int
    max_tokens_limit: int
    temperature: float
    top_p: float


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(f"'{name}' must be a number, got {value!r}", name)
    if not low <= value <= high:
        raise ApiError(f"'{name}' must be between {low:g} and {high:g}, got {value!r}", name)
    return float(value)


def _integer(body: dict, names: tuple[str, ...], default: int, low: int, high: int) -> int:
    name = next((n for n in names if body.get(n) is not None), names[0])
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"'{name}' must be an integer, got {value!r}", name)
    if not low <= value <= high:
        raise ApiError(f"'{name}' must be between {low} and {high}, got {value!r}", name)
    return value


MAX_STOP_TEXTS = 4
MAX_TOP_LOGPROBS = 20
# Fields of OpenAI's API this server cannot honour: refused, never silently ignored. Each
# maps to the values that mean "not used", which are accepted.
UNSUPPORTED = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
}


def _refuse_unsupported(body: dict) -> None:
    for name, unused in UNSUPPORTED.items():
        if body.get(name) not in unused:
            raise ApiError(
                f"'{name}' is not supported by this server (a character-level chat model)",
                name,
                code="unsupported_parameter",
            )


def _stop_texts(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) and t for t in texts):
        raise ApiError("'stop' must be a non-empty string or a list of them", "stop")
    if len(texts) > MAX_STOP_TEXTS:
        raise ApiError(f"'stop' holds at most {MAX_STOP_TEXTS} strings, got {len(texts)}", "stop")
    return tuple(texts)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(f"'{name}' must be true or false, got {value!r}", name)
    return value


def message_text(message: Any, where: str) -> tuple[str, str]:
    """A message's role and text; content is a string or a list of text parts."""
    if not isinstance(message, dict):
        raise ApiError(f"{where} must be an object with 'role' and 'content'", where)
    role = message.get("role")
    if role not in ROLES:
        raise ApiError(
            f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role"
        )
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise ApiError(f"{where}.content: only text parts are supported", f"{where}.content")
        if not all(isinstance(p.get("text"), str) for p in content):
            raise ApiError(f"{where}.content: a text part needs a 'text' string", where)
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(f"{where}.content must be a string, got {content!r}", f"{where}.content")
    return role, content


def conversation(messages: Any) -> tuple[str | None, tuple[dialogs.Turn, ...], str]:
    """The system prompt (if given), the earlier turns, and the last user message.

    The REPL's shape: an optional system message first, then user and assistant in
    turn, ending with the user message to answer.
    """
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' must be a non-empty list of messages", "messages")
    said = [message_text(m, f"messages[{i}]") for i, m in enumerate(messages)]
    system = None
    if said[0][0] == "system":
        system = said.pop(0)[1]
    roles = [role for role, _ in said]
    expected = ["user", "assistant"] * (len(said) // 2) + ["user"]
    if roles != expected[: len(said)] or len(said) % 2 == 0:
        raise ApiError(
            "'messages' must be: an optional system message, then user and assistant "
            "messages in turn, ending with a user message",
            "messages",
        )
    turns = tuple((said[i][1], said[i + 1][1]) for i in range(0, len(said) - 1, 2))
    return system, turns, said[-1][1]


def _shared_fields(body: Any, defaults: Defaults) -> dict:
    """The fields chat and text completions share, checked (the first bad one named)."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    _refuse_unsupported(body)
    if _integer(body, ("n",), 1, 1, 1) != 1:
        raise ApiError("only n=1 is supported", "n")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(f"'model' must be a string, got {model!r}", "model")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError("'stream_options' must be an object", "stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(f"'seed' must be an integer, got {seed!r}", "seed")
    return {
        "max_tokens": _integer(
            body,
            ("max_completion_tokens", "max_tokens"),
            defaults.max_tokens,
            1,
            defaults.max_tokens_limit,
        ),
        "temperature": _number(body, "temperature", defaults.temperature, 0.0, 2.0),
        "top_p": _number(body, "top_p", defaults.top_p, 0.0, 1.0),
        "seed": seed,
        "stream": _flag(body, "stream"),
        "include_usage": _flag(options or {}, "include_usage"),
        "stop": _stop_texts(body),
    }


def parse_chat_request(body: Any, defaults: Defaults) -> ChatRequest:
    """Check a decoded chat request body field by field; ApiError names the first bad one."""
    fields = _shared_fields(body, defaults)
    system, history, user = conversation(body.get("messages"))
    return ChatRequest(
        user=user, history=history, system=system, top_logprobs=_top_logprobs(body), **fields
    )


# Fields of the completions API this server cannot honour, with the values that mean "not used".
TEXT_UNSUPPORTED = {"echo": (None, False), "suffix": (None, ""), "best_of": (None, 1)}


def parse_completion_request(body: Any, defaults: Defaults) -> CompletionRequest:
    """Check a decoded text-completions body (`prompt`: the text to continue)."""
    fields = _shared_fields(body, defaults)
    for name, unused in TEXT_UNSUPPORTED.items():
        if body.get(name) not in unused:
            raise ApiError(f"'{name}' is not supported by this server", name)
    if body.get("logprobs") is not None:
        raise ApiError("'logprobs' is offered by /v1/chat/completions only", "logprobs")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError("'prompt' must be the text to continue: a non-empty string", "prompt")
    return CompletionRequest(prompt=prompt, **fields)


def _top_logprobs(body: dict) -> int | None:
    """None without `logprobs`; else how many alternatives each token reports (0-20)."""
    top = _integer(body, ("top_logprobs",), 0, 0, MAX_TOP_LOGPROBS)
    if not _flag(body, "logprobs"):
        if body.get("top_logprobs") is not None:
            raise ApiError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return None
    return top
