"""Chat-completions requests: what is accepted, and the field each refusal names."""

from __future__ import annotations

import pytest

from tinytx_jax.serving import openai_api
from tinytx_jax.serving.openai_api import ApiError

DEFAULTS = openai_api.Defaults(max_tokens=200, max_tokens_limit=4096, temperature=0.0, top_p=1.0)


def parse(**fields):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return openai_api.parse_chat_request(body, DEFAULTS)


def test_defaults_and_overrides():
    request = parse()
    assert (request.user, request.history, request.system) == ("hi", (), None)
    assert (request.max_tokens, request.temperature, request.top_p, request.stream) == (
        200,
        0.0,
        1.0,
        False,
    )
    request = parse(max_tokens=7, temperature=0.5, top_p=0.9, seed=3, stream=True)
    assert (request.max_tokens, request.temperature, request.top_p, request.seed) == (
        7,
        0.5,
        0.9,
        3,
    )
    assert parse(max_completion_tokens=9).max_tokens == 9
    assert parse(stream=True, stream_options={"include_usage": True}).include_usage


def test_messages_become_system_history_and_question():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello!"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "what "}, {"type": "text", "text": "is 2+2?"}],
        },
    ]
    request = parse(messages=messages)
    assert request.system == "Be brief."
    assert request.history == (("hi", "hello!"),)
    assert request.user == "what is 2+2?"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": None}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": ["hi"]}, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "messages",
        ),
        ({"messages": [{"role": "system", "content": "s"}]}, "messages"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": "x"}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": 3}, "stream_options"),
        ({"n": 2}, "n"),
        ({"model": 7}, "model"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(fields, param):
    with pytest.raises(ApiError) as refused:
        parse(**fields)
    assert refused.value.status == 400 and refused.value.param == param
    error = refused.value.body()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_a_body_that_is_not_an_object_is_refused():
    for body in ([], "hi", 3, None):
        with pytest.raises(ApiError):
            openai_api.parse_chat_request(body, DEFAULTS)


@pytest.mark.parametrize(
    "field, value",
    [
        ("tools", [{"type": "function"}]),
        ("response_format", {"type": "json_object"}),
        ("logit_bias", {"1": 5}),
        ("frequency_penalty", 0.5),
    ],
)
def test_what_the_server_cannot_honour_is_refused_naming_the_field(field, value):
    with pytest.raises(openai_api.ApiError) as refused:
        parse(**{field: value})
    assert refused.value.param == field and refused.value.code == "unsupported_parameter"


def test_unused_values_of_those_fields_are_accepted():
    parse(tools=[], response_format={"type": "text"}, logprobs=False, frequency_penalty=0)


def test_logprobs_and_how_many_alternatives():
    assert parse().top_logprobs is None and parse(logprobs=False).top_logprobs is None
    assert parse(logprobs=True).top_logprobs == 0
    assert parse(logprobs=True, top_logprobs=20).top_logprobs == 20
    for fields in (
        {"top_logprobs": 2},
        {"logprobs": True, "top_logprobs": 21},
        {"logprobs": "yes"},
    ):
        with pytest.raises(openai_api.ApiError) as refused:
            parse(**fields)
        assert refused.value.param in ("top_logprobs", "logprobs")


def test_stop_takes_a_string_or_up_to_four():
    assert parse(stop="x").stop == ("x",) and parse(stop=["a", "b"]).stop == ("a", "b")
    for bad in (["a"] * 5, [""], 3, [1]):
        with pytest.raises(openai_api.ApiError) as refused:
            parse(stop=bad)
        assert refused.value.param == "stop"
