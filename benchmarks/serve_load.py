"""The server under load: time to ready, throughput and latency by concurrency, errors by
kind, and memory over many requests.

    python -m benchmarks.serve_load [--workdir=DIR] [--requests=1000] [--levels=1,8,32,128,256]
        [--soak=100000]
    python -m benchmarks.serve_load --text_workdir=DIR [--text_levels=1,8,32,128]

Starts `main.py --mode=serve` on the checkpoint in --workdir (training `configs/fast.py`
there first if it has none), twice: with an empty compilation cache (cold) and with the
cache the first start filled (warm), timing each from the start of the process to
`Serving` and to the end of its background compiling, and firing 64 requests at the cold
one as soon as it is ready, then the same 64 again. On the warm server, once it has
compiled everything, it posts the checkpoint's own training questions at each
level of concurrency (each client thread on its own keep-alive connection), then
--memory_requests more at 32 in flight, reading the server's RSS before and after, and
with --soak that many more, its RSS every 10,000. With --text_workdir (a text model's
workdir) it measures only long replies: 200-character samples from /v1/completions at
each level of --text_levels, characters per second and latency per request.
Client and server share the machine.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from benchmarks.machine import cpu_model
from benchmarks.trained_workdir import ensure_checkpoint
from tinytx_jax.data import corpus
from tinytx_jax.inference import text_sample, trained

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir with a checkpoint (default: a temp dir).")
_REQUESTS = flags.DEFINE_integer("requests", 1000, "Requests at each level of concurrency.")
_LEVELS = flags.DEFINE_list("levels", ["1", "8", "32", "128", "256"], "Requests in flight.")
_MEMORY_REQUESTS = flags.DEFINE_integer("memory_requests", 10_000, "Requests for the RSS check.")
_TEXT_WORKDIR = flags.DEFINE_string(
    "text_workdir", None, "A text model's workdir: measure 200-character samples only."
)
_TEXT_LEVELS = flags.DEFINE_list("text_levels", ["1", "8", "32", "128"], "Samples in flight.")
_SOAK = flags.DEFINE_integer(
    "soak", 0, "Then this many requests at 32 in flight, RSS every 10,000 (e.g. 100000)."
)

REPO = Path(__file__).resolve().parent.parent


def start_server(workdir: str, env: dict) -> tuple[subprocess.Popen, str, float]:
    """A server process, its address, and seconds from its start to `Serving`."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "main.py", "--mode=serve", f"--workdir={workdir}", "--port=0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
    )
    line = process.stdout.readline()
    return process, line.split("http://")[1].split()[0], time.perf_counter() - start


def seconds_to_compile_all(address: str, since: float) -> float:
    """Wait until the server's background compiling is done; seconds from `since`."""
    while True:
        connection = http.client.HTTPConnection(address, timeout=60)
        connection.request("GET", "/health")
        left = json.loads(connection.getresponse().read())["programs_compiling"]
        connection.close()
        if not left:
            return time.perf_counter() - since
        time.sleep(0.1)


def rss_mb(process: subprocess.Popen) -> float:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def chat_bodies(questions: list[str]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}]} for q in questions]


def load(
    address: str, bodies: list[dict], in_flight: int, path: str = "/v1/chat/completions"
) -> dict:
    """Post every body, `in_flight` at a time; latencies, outcomes, characters out."""
    outcomes: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    characters = [0]
    shares = [bodies[i::in_flight] for i in range(in_flight)]

    def client(share: list[dict]) -> None:
        connection = http.client.HTTPConnection(address, timeout=300)
        for body in share:
            start = time.perf_counter()
            try:
                connection.request("POST", path, json.dumps(body))
                response = connection.getresponse()
                answer = response.read()
                outcomes[str(response.status)] += 1
                latencies.append(time.perf_counter() - start)
                if response.status == 200:
                    characters[0] += json.loads(answer)["usage"]["completion_tokens"]
            except (OSError, http.client.HTTPException) as error:
                outcomes[type(error).__name__] += 1
                connection.close()
                connection = http.client.HTTPConnection(address, timeout=300)

    start = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(client, shares))
    wall = time.perf_counter() - start
    return {
        "in_flight": in_flight,
        "requests": len(bodies),
        "per_s": len(bodies) / wall,
        "chars_per_s": characters[0] / wall,
        "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
        "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
        "outcomes": dict(outcomes),
    }


def long_replies(workdir: str, levels: list[int]) -> None:
    """A text model's samples of 200 characters at each level of concurrency."""
    model = trained.load_trained(workdir, log=lambda _: None)
    prompt = text_sample.default_prompt(model.vocab)
    server, address, ready_s = start_server(workdir, {})
    try:
        seconds_to_compile_all(address, time.perf_counter())
        print(f"text model {workdir} (ready in {ready_s:.1f} s), 200-character samples:")
        print(f"{'in flight':>9} {'requests':>9} {'chars/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        rates = {}
        for level in levels:
            bodies = [
                {"prompt": prompt, "max_tokens": 200, "temperature": 0.8, "seed": i}
                for i in range(max(32, 2 * level))
            ]
            load(address, bodies[:level], level, "/v1/completions")  # a round not counted
            row = load(address, bodies, level, "/v1/completions")
            rates[level] = row["chars_per_s"]
            print(
                f"{level:>9} {row['requests']:>9} {row['chars_per_s']:>9.0f} "
                f"{row['p50_ms']:>8.0f} {row['p99_ms']:>8.0f}  {row['outcomes']}",
                flush=True,
            )
        if 1 in rates and 32 in rates:
            print(f"characters/s at 32 in flight / one at a time: {rates[32] / rates[1]:.1f}x")
    finally:
        server.terminate()
        server.wait(timeout=60)


def soak(address: str, server: subprocess.Popen, questions: list[str], requests: int) -> None:
    """`requests` more at 32 in flight, the server's RSS after every 10,000."""
    done, outcomes = 0, collections.Counter()
    while done < requests:
        block = min(10_000, requests - done)
        asked = [questions[i % len(questions)] for i in range(block)]
        row = load(address, chat_bodies(asked), 32)
        done += block
        outcomes.update(row["outcomes"])
        print(f"soak: {done:>7,} requests  RSS {rss_mb(server):.0f} MB", flush=True)
    if requests:
        print(f"soak outcomes: {dict(outcomes)}")


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    if _TEXT_WORKDIR.value:
        print(f"CPU: {cpu_model()}")
        long_replies(_TEXT_WORKDIR.value, [int(level) for level in _TEXT_LEVELS.value])
        return
    workdir = ensure_checkpoint(_WORKDIR.value)
    data_path = trained.load_trained(workdir, log=lambda _: None).run.data.data_path
    questions = [c.turns[0][0] for c in corpus.load_corpus(data_path, 1).conversations]
    print(f"CPU: {cpu_model()}; checkpoint {workdir}; {len(questions)} distinct questions")
    with tempfile.TemporaryDirectory() as cache:
        env = {"JAX_COMPILATION_CACHE_DIR": cache}
        started = time.perf_counter()
        cold, cold_address, cold_s = start_server(workdir, env)
        burst = [questions[i % len(questions)] for i in range(64)]
        first = load(cold_address, chat_bodies(burst), 64)
        later = load(cold_address, chat_bodies(burst), 64)
        cold_all_s = seconds_to_compile_all(cold_address, started)
        cold.terminate()
        cold.wait(timeout=60)
        started = time.perf_counter()
        server, address, warm_s = start_server(workdir, env)
        warm_all_s = seconds_to_compile_all(address, started)
    print(
        f"time to ready: cold {cold_s:.1f} s, warm {warm_s:.1f} s; every program compiled "
        f"(in the background): cold {cold_all_s:.1f} s, warm {warm_all_s:.1f} s"
    )
    print(
        f"64 requests in flight as soon as a cold server is ready: p99 {first['p99_ms']:.0f} ms; "
        f"the same 64 again: p99 {later['p99_ms']:.0f} ms "
        f"({first['p99_ms'] / later['p99_ms']:.1f}x)"
    )
    try:
        header = f"{'in flight':>9} {'requests':>9} {'replies/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
        print(header + "  outcomes")
        results = []
        for level in map(int, _LEVELS.value):
            asked = [questions[i % len(questions)] for i in range(_REQUESTS.value)]
            row = load(address, chat_bodies(asked), level)
            results.append(row)
            print(
                f"{level:>9} {row['requests']:>9} {row['per_s']:>10.1f} {row['p50_ms']:>8.1f} "
                f"{row['p99_ms']:>8.1f}  {row['outcomes']}",
                flush=True,
            )
        by_level = {row["in_flight"]: row["per_s"] for row in results}
        if 1 in by_level and 32 in by_level:
            print(f"throughput at 32 in flight / one at a time: {by_level[32] / by_level[1]:.1f}x")
        if _MEMORY_REQUESTS.value:
            before = rss_mb(server)
            asked = [questions[i % len(questions)] for i in range(_MEMORY_REQUESTS.value)]
            row = load(address, chat_bodies(asked), 32)
            print(
                f"server RSS: {before:.0f} MB before, {rss_mb(server):.0f} MB after "
                f"{row['requests']:,} more requests ({row['outcomes']})"
            )
        soak(address, server, questions, _SOAK.value)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    app.run(main)
