"""`--mode=serve` of a plain-text model: /v1/completions continues a text as the REPL's
generator does, whole or streamed; the chat route names the one to use."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.conftest import Server
from tests.test_serve import get, post
from tinytx_jax.inference import generation, sampling, trained

pytestmark = pytest.mark.e2e


def streamed_text(url: str, body: dict) -> tuple[str, str]:
    """The text of a streamed completion, and its finish reason."""
    request = urllib.request.Request(
        url + "/v1/completions",
        json.dumps({**body, "stream": True}).encode(),
        {"Content-Type": "application/json"},
    )
    pieces, finish = [], None
    with urllib.request.urlopen(request, timeout=60) as response:
        for line in response:
            data = line.decode().removeprefix("data: ").strip()
            if data and data != "[DONE]":
                choice = json.loads(data)["choices"][0]
                pieces.append(choice["text"])
                finish = choice["finish_reason"] or finish
    return "".join(pieces), finish


def test_a_text_model_continues_a_prompt_as_the_generator_does(text_run):
    workdir, _ = text_run
    model = trained.load_trained(workdir, log=lambda _: None)
    config = sampling.SamplingConfig(max_new_tokens=60)
    generator = generation.Generator(model.model, model.params, model.vocab, config, ())
    tokens, _ = generator.generate_tokens(model.vocab.encode("what does"))
    expected = model.vocab.decode(tokens)
    running = Server(workdir, "--config.serve_slots=4")
    try:
        body = {"prompt": "what does", "max_tokens": 60, "temperature": 0}
        status, answer = post(running.url, body, path="/v1/completions")
        assert status == 200 and answer["object"] == "text_completion"
        choice = answer["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == (expected, "length")
        assert answer["usage"]["completion_tokens"] == 60
        assert streamed_text(running.url, body) == (expected, "length")
        status, answer = post(running.url, {**body, "stop": ["says"]}, path="/v1/completions")
        assert answer["choices"][0]["text"] == expected.split("says")[0]
        status, answer = post(running.url, {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 400 and "/v1/completions" in answer["error"]["message"]
        for bad, param in (({"prompt": ""}, "prompt"), ({"prompt": "a", "echo": True}, "echo")):
            status, answer = post(running.url, bad, path="/v1/completions")
            assert (status, answer["error"]["param"]) == (400, param)
        assert get(running.url + "/health")["compiled_after_ready"] == 0
    finally:
        running.stop()
