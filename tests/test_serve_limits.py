"""The server under load and failure, in-process on a tiny random model that never stops
by itself (no stop texts), so every reply takes exactly max_tokens steps: a full queue is
a 429, a slow reply a 504, a failed engine a 500 with /health at 503, a client that leaves
frees its slot, and /metrics counts it all."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.error import HTTPError

import jax
import numpy as np
import pytest
import uvicorn

from tinytx_jax.configuration import DIALOGS
from tinytx_jax.inference.decode_slots import DecodeSlots
from tinytx_jax.inference.trained import TrainedModel
from tinytx_jax.model.config import ModelConfig
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.serving import openai_api, server
from tinytx_jax.serving.service import ChatService, ServeSettings
from tinytx_jax.text import dialogs, vocabulary

VOCAB = vocabulary.Vocabulary.from_text(dialogs.builtin_corpus(1))
HI = {"messages": [{"role": "user", "content": "hi"}]}


class InProcessServer:
    """A uvicorn server in a thread over `DecodeSlots` of a random model."""

    def __init__(self, slots: int = 2, queue: int = 2, timeout_s: float = 60.0):
        model = TinyTransformer(ModelConfig(vocab_size=VOCAB.size, d_model=16, max_len=64))
        params = model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
        meta = {"config": {}, "data": {"kind": DIALOGS}, "metrics": {"val_loss": 0.0}}
        trained = TrainedModel(model, params, VOCAB, meta, epoch=1)
        self.engine = DecodeSlots(
            model, params, VOCAB, slots=slots, stop_texts=(), warm_up=True, max_waiting=queue
        )
        defaults = openai_api.Defaults(200, 4096, 0.0, 1.0)
        settings = ServeSettings(None, defaults, dialogs.SYSTEM_PROMPT, timeout_s=timeout_s)
        self.service = ChatService(trained, self.engine, settings, "tiny")
        self.log = io.StringIO()
        app = server.create_app(self.service)
        app.out = self.log
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="critical", lifespan="off")
        self.uvicorn = uvicorn.Server(config)
        sock.listen(128)
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [sock]})
        self.thread.start()
        while not self.uvicorn.started:
            time.sleep(0.01)

    def close(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(30)
        self.engine.close()


@pytest.fixture
def running(request):
    instance = InProcessServer(**getattr(request, "param", {}))
    yield instance
    instance.close()


def call(url: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw) if raw else {}
    except HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


@pytest.mark.parametrize("running", [{"slots": 1, "queue": 1}], indirect=True)
def test_beyond_the_queue_a_429_with_retry_after_and_an_openai_error(running):
    long = {**HI, "max_tokens": 400}
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda _: call(running.url, "/v1/chat/completions", long), range(8))
        )
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) == {200, 429}
    refused = next(r for r in results if r[0] == 429)
    assert refused[1]["retry-after"] == "1"
    assert refused[2]["error"]["type"] == "rate_limit_exceeded"
    assert running.engine.in_flight == 0


@pytest.mark.parametrize("running", [{"timeout_s": 0.3}], indirect=True)
def test_a_reply_past_the_deadline_is_a_504_and_frees_its_slot(running):
    status, _, body = call(running.url, "/v1/chat/completions", {**HI, "max_tokens": 4000})
    assert status == 504 and body["error"]["code"] == "deadline_exceeded"
    deadline = time.monotonic() + 10
    while running.engine.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.engine.in_flight == 0 and running.engine.cancelled == 1


def test_a_client_that_leaves_a_whole_reply_frees_its_slot(running):
    payload = json.dumps({**HI, "max_tokens": 4000}).encode()
    sock = socket.create_connection(running.url.removeprefix("http://").split(":"), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    deadline = time.monotonic() + 10
    while not running.engine.busy_slots and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()
    while running.engine.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.engine.in_flight == 0 and running.engine.cancelled == 1


def test_an_engine_failure_is_a_500_a_503_health_and_one_line(running):
    failures = []
    running.engine.on_failure = failures.append

    def broken(*args):
        raise RuntimeError("device lost")

    running.engine.programs.step = broken
    status, _, body = call(running.url, "/v1/chat/completions", {**HI, "max_tokens": 50})
    assert status == 500 and "device lost" in body["error"]["message"]
    health_status, _, health = call(running.url, "/health")
    assert health_status == 503 and health["status"] == "failed"
    assert failures == [running.engine.failure] and "RuntimeError: device lost" in failures[0]
    again, _, _ = call(running.url, "/v1/chat/completions", HI)
    assert again == 500


def test_metrics_count_requests_tokens_and_latency_and_the_log_has_a_line_each(running):
    for stream in (False, True):
        request = urllib.request.Request(
            running.url + "/v1/chat/completions",
            json.dumps({**HI, "max_tokens": 7, "stream": stream}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
    with urllib.request.urlopen(running.url + "/metrics", timeout=60) as response:
        text = response.read().decode()
        assert response.headers["content-type"].startswith("text/plain")
    assert 'tinytx_requests_total{code="200",route="/v1/chat/completions"} 2.0' in text
    assert "tinytx_completion_tokens_total 14.0" in text
    assert "tinytx_time_to_first_token_seconds_count 2.0" in text
    assert 'tinytx_request_duration_seconds_count{route="/v1/chat/completions"} 2.0' in text
    assert "tinytx_queue_depth 0.0" in text and "tinytx_busy_slots 0.0" in text
    lines = running.log.getvalue().splitlines()
    assert [ln.split()[:3] for ln in lines[:2]] == [["POST", "/v1/chat/completions", "200"]] * 2


@pytest.mark.parametrize("running", [{"slots": 3, "queue": 200}], indirect=True)
def test_many_connections_get_answers_and_nothing_compiles_after_ready(running):
    """128 connections at once, prompts of every length: all answered, none reset, and no
    program had to compile while serving (the warm-up covers every shape, 3 slots too)."""

    def one(i):
        body = {"messages": [{"role": "user", "content": "hi " * (i % 40 + 1)}], "max_tokens": 5}
        return call(running.url, "/v1/chat/completions", body)[0]

    with ThreadPoolExecutor(128) as pool:
        statuses = list(pool.map(one, range(128)))
    assert statuses == [200] * 128
    assert running.engine.programs.compiled_late == 0


def test_winding_down_ends_every_stream_whole_and_refuses_new_requests(running):
    def stream(_):
        request = urllib.request.Request(
            running.url + "/v1/chat/completions",
            json.dumps({**HI, "max_tokens": 4000, "stream": True}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode()

    with ThreadPoolExecutor(3) as pool:  # 2 slots busy, 1 waiting
        streams = [pool.submit(stream, i) for i in range(3)]
        deadline = time.monotonic() + 30
        while running.engine.in_flight < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        running.engine.wind_down()
        bodies = [future.result(timeout=60) for future in streams]
    for body in bodies:
        assert body.endswith("data: [DONE]\n\n") and '"finish_reason": "length"' in body
    assert running.engine.ended_early == 3
    status, headers, refused = call(running.url, "/v1/chat/completions", HI)
    assert status == 503 and refused["error"]["code"] == "server_stopping"
    assert headers["retry-after"] == "1"


def test_a_request_whose_cpu_work_blocks_stalls_neither_health_nor_other_requests(running):
    """The request's own CPU work (normalising, matching, encoding) runs off the event
    loop: while one request's is held up, /health and another request are answered."""
    started, release = threading.Event(), threading.Event()
    real_prompt = running.service.prompt

    def held_prompt(request):
        if request.user == "held":
            started.set()
            release.wait(30)
        return real_prompt(request)

    running.service.prompt = held_prompt
    held = {"messages": [{"role": "user", "content": "held"}], "max_tokens": 2}
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(call, running.url, "/v1/chat/completions", held)
        assert started.wait(30)
        health = call(running.url, "/health")
        other = call(running.url, "/v1/chat/completions", {**HI, "max_tokens": 2})
        assert health[0] == 200 and other[0] == 200 and not waiting.done()
        release.set()
        assert waiting.result()[0] == 200
