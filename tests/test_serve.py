"""`--mode=serve` end to end: the openai client, plain HTTP, streaming, concurrency, and
bad input that gets a 4xx with an OpenAI error body while the server keeps serving."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.error import HTTPError

import openai
import pytest

from tests.conftest import Server, matching_copy, repl_reply, run_main
from tinytx_jax.serving import stored_programs

pytestmark = pytest.mark.e2e

HI = [{"role": "user", "content": "hi"}]


def post(
    url: str, body: bytes | dict, headers: dict | None = None, path: str = "/v1/chat/completions"
) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data, {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def test_the_openai_client_chats_with_the_trained_model(server, trained_workdir):
    chat = client(server).chat.completions
    reply = chat.create(model="any", messages=HI)
    assert reply.choices[0].message.content == "hello!"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == len("hello!</assistant>")
    prompt = "<system>You are helpful.</system>\n<user>hi</user>\n<assistant>"
    assert reply.usage.prompt_tokens == len(prompt)
    with_history = chat.create(
        model="any",
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello!"},
            {"role": "user", "content": "what is 2+2?"},
        ],
    )
    expected = repl_reply(trained_workdir, "what is 2+2?", (("hi", "hello!"),))
    assert with_history.choices[0].message.content == expected
    [model] = client(server).models.list().data
    assert model.owned_by == "tinytx-jax" and model.id == get(server.url + "/health")["model"]


def test_streaming_sends_the_reply_in_chunks_then_done(server):
    stream = client(server).chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": "what color is the sky?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "blue" and len(chunks) >= 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == len("blue</assistant>")
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps({"messages": HI, "stream": True}))
    raw = connection.getresponse()
    assert raw.getheader("content-type").startswith("text/event-stream")
    assert raw.read().decode().rstrip().endswith("data: [DONE]")


def test_concurrent_requests_all_get_their_own_answer(server):
    questions = {"hi": "hello!", "what is 2+2?": "4", "what color is the sky?": "blue"}
    asked = list(questions) * 16

    def ask(question: str) -> str:
        status, body = post(server.url, {"messages": [{"role": "user", "content": question}]})
        assert status == 200
        return body["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(ask, asked))
    assert answers == [questions[q] for q in asked]
    assert get(server.url + "/health")["in_flight"] == 0


BAD_REQUESTS = [
    (b"{not json", 400),
    (b"\xff\xfe", 400),
    (b"[1, 2]", 400),
    (b"[" * 100_000, 400),
    ({"messages": []}, 400),
    ({"model": "m"}, 400),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ({"messages": [{"role": "user", "content": None}]}, 400),
    ({"messages": HI, "max_tokens": -5}, 400),
    ({"messages": HI, "max_tokens": 10**12}, 400),
    ({"messages": HI, "temperature": "warm"}, 400),
    ({"messages": [{"role": "user", "content": "¿¿¿"}]}, 400),
    (json.dumps({"messages": HI, "pad": "x" * (2 << 20)}).encode(), 413),
]


@pytest.mark.parametrize(("body", "status"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_openai_error_and_the_server_keeps_serving(server, body, status):
    got, answer = post(server.url, body)
    assert got == status
    assert (
        set(answer["error"]) >= {"message", "type", "param", "code"} and answer["error"]["message"]
    )
    assert get(server.url + "/health")["status"] == "ok"


def test_unknown_routes_and_methods_get_openai_errors(server):
    for path, method, status in (("/v2/nothing", "GET", 404), ("/v1/chat/completions", "GET", 405)):
        connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
        connection.request(method, path)
        response = connection.getresponse()
        assert response.status == status and "error" in json.loads(response.read())


def test_unknown_characters_are_dropped_with_a_notice(server):
    status, body = post(server.url, {"messages": [{"role": "user", "content": "hi¿"}]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "hello!"
    assert "'¿'" in body["notices"][0]


def test_a_prompt_over_max_len_is_trimmed_with_a_notice(server):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}] * 20
    status, body = post(server.url, {"messages": [*history, *HI], "max_tokens": 50})
    assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] > 512
    assert "kept the most recent 512" in body["notices"][0]


def long_reply_seed(workdir, system: str, tokens: int = 1000) -> int:
    """A seed whose reply at temperature 2 to `hi` after `system` runs `tokens` or more (the
    REPL's reply with seed s is the server's): one that takes its slot for a while."""
    from tinytx_jax.inference import generation, sampling, trained
    from tinytx_jax.text import dialogs

    model = trained.load_trained(workdir, log=lambda _: None)
    prompt = model.vocab.encode(dialogs.render_prompt("hi", system))
    for seed in range(10):
        settings = sampling.SamplingConfig(temperature=2.0, seed=seed, max_new_tokens=tokens)
        generator = generation.Generator(model.model, model.params, model.vocab, settings)
        if len(generator.generate_tokens(prompt)[0]) >= tokens:
            return seed
    raise AssertionError(
        f"no reply of {tokens} tokens in 10 seeds: the test cannot leave mid-reply"
    )


def test_a_client_leaving_mid_stream_frees_its_slot(server, trained_workdir):
    system = "?" * 200  # far from any training text: the replies rarely find their end tag
    seed = long_reply_seed(trained_workdir, system)
    messages = [{"role": "system", "content": system}, *HI]
    body = {"messages": messages, "stream": True, "max_tokens": 4000, "temperature": 2.0}
    body["seed"] = seed
    cancelled = get(server.url + "/health")["cancelled"]
    sock = socket.create_connection(server.url.removeprefix("http://").split(":"), timeout=60)
    payload = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while b"data:" not in received:
        received += sock.recv(4096)
    sock.close()
    status, answer = post(server.url, {"messages": HI})
    assert status == 200 and answer["choices"][0]["message"]["content"] == "hello!"
    deadline = time.monotonic() + 10
    while get(server.url + "/health")["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    health = get(server.url + "/health")
    assert health["in_flight"] == 0 and health["cancelled"] == cancelled + 1
    assert health["most_rounds_to_free"] <= 1  # freed before a second decode step
    with urllib.request.urlopen(server.url + "/metrics", timeout=60) as response:
        metrics = response.read().decode()
    count = float(metrics.split("tinytx_cancel_to_free_seconds_count ")[1].split()[0])
    within = metrics.split('tinytx_cancel_to_free_seconds_bucket{le="0.25"} ')[1].split()[0]
    assert count == cancelled + 1 and float(within) == count  # each freed within 0.25 s


def seconds_to_answer(url: str, content: str, max_tokens: int = 20) -> tuple[float, int, dict]:
    start = time.perf_counter()
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    status, reply = post(url, body)
    return time.perf_counter() - start, status, reply


def test_hostile_texts_stall_nothing_and_sigterm_stops_cleanly(trained_workdir, tmp_path):
    """A model that normalises with every step, matching known turns of 1,500 characters:
    the texts that once backtracked or took the matching seconds are answered (or refused)
    at once, other requests meanwhile too; the log has no traceback; one SIGTERM stops it."""
    long_turn = " ".join(f"word{i:04d}" for i in range(170))[:1500]
    known = ["hi", "what is 2+2?", "color of sky?", long_turn]
    running = Server(matching_copy(trained_workdir, tmp_path / "w", known))
    try:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(seconds_to_answer, running.url, "x" + " ,thanks" * 34)
            seconds, status, reply = seconds_to_answer(running.url, "hi")
            assert status == 200 and reply["choices"][0]["message"]["content"] == "hello!"
            assert seconds < 1.0 and slow.result()[0] < 1.0
        near = "so " * 400 + long_turn[:700] + long_turn[701:] + " thanks" * 300
        assert len(near) > 4_400
        for text in (near, "," * 100_000, "hi " * 350_000):
            seconds, status, _ = seconds_to_answer(running.url, text)
            assert status in (200, 400, 413) and seconds < 2.0, (len(text), status, seconds)
        for body, _ in BAD_REQUESTS:
            post(running.url, body)
        status, out, err = running.stop(signal.SIGTERM)
        assert status == 0 and "Server stopped (SIGTERM)" in out, out
        assert "Traceback" not in err and "Error" not in err
    finally:  # a failed check must not leave the server running
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def test_an_api_key_is_required_when_set(trained_workdir):
    running = Server(trained_workdir, env={"TINYTX_API_KEY": "sesame"})
    try:
        status, body = post(running.url, {"messages": HI})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        status, body = post(running.url, {"messages": HI}, {"Authorization": "Bearer sesame"})
        assert status == 200
        with pytest.raises(openai.AuthenticationError):
            client(running).models.list()
        assert get(running.url + "/health")["api_key_required"]
    finally:
        running.stop()


def test_a_taken_port_is_one_line(server, trained_workdir):
    port = server.url.rsplit(":", 1)[1]
    result = run_main("--mode=serve", f"--workdir={trained_workdir}", f"--port={port}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot listen on")
    assert "Traceback" not in result.stderr


def test_top_p_at_zero_is_greedy_whatever_the_temperature(server):
    for seed in range(5):
        body = {"messages": HI, "temperature": 1.0, "top_p": 0.0, "seed": seed}
        status, answer = post(server.url, body)
        assert status == 200 and answer["choices"][0]["message"]["content"] == "hello!"


def test_a_prompt_longer_than_max_len_gets_the_repls_reply(server, trained_workdir):
    user = ("what is 2+2? " * 60)[:700]  # 700 characters: the prompt is over max_len (512)
    status, answer = post(server.url, {"messages": [{"role": "user", "content": user}]})
    assert status == 200 and "kept the most recent 512" in answer["notices"][0]
    assert answer["choices"][0]["message"]["content"] == repl_reply(trained_workdir, user)


def test_a_cold_start_serves_at_once_and_stores_its_programs_beside_the_checkpoint(
    trained_workdir, tmp_path
):
    """A workdir whose stored programs were made elsewhere (another JAX): one line, then a
    cold start that serves once two programs are compiled; the first requests meet
    nothing left to compile on their path, and the programs land in WORKDIR/compiled."""
    workdir = tmp_path / "copy"
    shutil.copytree(trained_workdir, workdir, ignore=shutil.ignore_patterns("compiled"))
    (workdir / "compiled").mkdir()
    elsewhere = {**stored_programs.this_machine(), "jax": "0.0.1"}
    (workdir / "compiled" / "manifest.json").write_text(json.dumps(elsewhere))
    cold = {"JAX_COMPILATION_CACHE_DIR": "", "TINYTX_CACHE_DIR": str(tmp_path / "cache")}
    running = Server(workdir, "--config.serve_slots=2", env=cold)
    try:
        health = get(running.url + "/health")
        assert health["programs_compiled"] == 2 and health["programs_compiling"] > 0
        questions = [
            ("hi", "what is 2+2?", "color of sky?")[i % 3] + " " * (i % 9) for i in range(32)
        ]
        with ThreadPoolExecutor(32) as pool:
            replies = list(
                pool.map(
                    lambda q: post(running.url, {"messages": [{"role": "user", "content": q}]}),
                    questions,
                )
            )
        assert [status for status, _ in replies] == [200] * 32
        answers = {
            q.strip(): r["choices"][0]["message"]["content"]
            for q, (_, r) in zip(questions, replies, strict=True)
        }
        assert answers == {"hi": "hello!", "what is 2+2?": "4", "color of sky?": "blue"}
        assert get(running.url + "/health")["compiled_after_ready"] == 0
    finally:
        _, _, err = running.stop()
    assert [line for line in err.splitlines() if "were made by jax 0.0.1" in line] == [
        f"(the compiled programs in {workdir / 'compiled'} were made by "
        f"{stored_programs.describe(elsewhere)}; this is "
        f"{stored_programs.describe(stored_programs.this_machine())}: compiling anew)"
    ]
    manifest = json.loads((workdir / "compiled" / "manifest.json").read_text())
    assert manifest == stored_programs.this_machine()
    assert len(list((workdir / "compiled").iterdir())) > 2  # the manifest and programs


def stream_bytes(url: str, body: dict) -> bytes:
    """A streamed reply as it came, read to the end of the connection."""
    sock = socket.create_connection(url.removeprefix("http://").split(":"), timeout=60)
    payload = json.dumps({**body, "stream": True}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Connection: close\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return received


def test_sigterm_ends_every_stream_whole_and_partial_requests_log_no_traceback(trained_workdir):
    running = Server(trained_workdir, "--config.serve_slots=4")
    try:
        for _ in range(50):  # half a request, then gone
            sock = socket.create_connection(running.url.removeprefix("http://").split(":"))
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 500\r\n\r\n{")
            sock.close()
        body = {"messages": HI, "max_tokens": 4000, "temperature": 2.0, "top_p": 1.0}
        with ThreadPoolExecutor(8) as pool:
            streams = [
                pool.submit(stream_bytes, running.url, {**body, "seed": i}) for i in range(8)
            ]
            time.sleep(0.5)  # the streams are decoding (4 slots) or waiting for one
            status, out, err = running.stop(signal.SIGTERM)
            replies = [future.result(timeout=60) for future in streams]
    finally:
        if running.process.poll() is None:
            running.stop()
    assert status == 0 and "Server stopped (SIGTERM)" in out, out
    assert all(reply.count(b"data: [DONE]") == 1 for reply in replies), replies
    assert "Traceback" not in err and " 500 " not in err, err  # half requests: 499, quietly


def test_logprobs_over_http_whole_and_streamed(server):
    body = {"messages": HI, "logprobs": True, "top_logprobs": 2}
    status, answer = post(server.url, body)
    content = answer["choices"][0]["logprobs"]["content"]
    assert status == 200 and "".join(e["token"] for e in content) == "hello!"
    assert all(len(e["top_logprobs"]) == 2 for e in content)
    stream = client(server).chat.completions.create(
        model="m", messages=HI, stream=True, logprobs=True, top_logprobs=2
    )
    streamed = [
        e
        for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for e in chunk.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e["token"], e["logprob"]) for e in content]
