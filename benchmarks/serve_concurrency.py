"""Serving throughput: requests decoded together against the same requests one at a time.

    python -m benchmarks.serve_concurrency [--workdir=DIR] [--requests=128] [--in_flight=32]

Starts `main.py --mode=serve` on the checkpoint in --workdir (training `configs/fast.py`
there first if it has none) and posts the first questions of the dialogs it was trained on
(the built-in ones, or its data file's) over HTTP, each
client thread on its own keep-alive connection: once the server has compiled every shape
and served one untimed round, first `--in_flight` requests one at a time, then
`--requests` requests with `--in_flight` of them in flight. Prints replies/s
and the p50/p99 latency of each, and their ratio. Client and server share the machine.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from benchmarks.trained_workdir import ensure_checkpoint
from tinytx_jax.data import corpus
from tinytx_jax.inference import trained

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir with a checkpoint (default: a temp dir).")
_REQUESTS = flags.DEFINE_integer("requests", 128, "Requests in the concurrent run.")
_IN_FLIGHT = flags.DEFINE_integer("in_flight", 32, "Requests in flight at once.")

REPO = Path(__file__).resolve().parent.parent


class Client:
    """One keep-alive connection posting chat completions."""

    def __init__(self, address: str):
        self.connection = http.client.HTTPConnection(address, timeout=120)

    def ask(self, question: str) -> tuple[float, str]:
        body = json.dumps({"messages": [{"role": "user", "content": question}]})
        start = time.perf_counter()
        self.connection.request("POST", "/v1/chat/completions", body)
        reply = json.loads(self.connection.getresponse().read())
        return time.perf_counter() - start, reply["choices"][0]["message"]["content"]


def trained_questions(workdir: str) -> list[str]:
    """The first user line of each conversation the checkpoint was trained on."""
    data_path = trained.load_trained(workdir, log=lambda _: None).config.data_path
    return [
        conversation.turns[0][0] for conversation in corpus.load_corpus(data_path, 1).conversations
    ]


def health(address: str) -> dict:
    connection = http.client.HTTPConnection(address, timeout=60)
    connection.request("GET", "/health")
    return json.loads(connection.getresponse().read())


def run(address: str, questions: list[str], in_flight: int) -> dict:
    """Post `questions` with `in_flight` client threads; throughput and latency."""
    clients = [Client(address) for _ in range(in_flight)]
    with ThreadPoolExecutor(in_flight) as pool:  # connect before timing
        list(pool.map(lambda client: client.ask(questions[0]), clients))
    start = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        shares = pool.map(
            lambda w: [clients[w].ask(q) for q in questions[w::in_flight]], range(in_flight)
        )
        results = [result for share in shares for result in share]
    wall = time.perf_counter() - start
    latencies = np.array([latency for latency, _ in results]) * 1e3
    return {
        "requests": len(questions),
        "in_flight": in_flight,
        "wall_s": wall,
        "replies_per_s": len(questions) / wall,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "replies": [reply for _, reply in results],
    }


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    workdir = ensure_checkpoint(_WORKDIR.value)
    server = subprocess.Popen(
        [sys.executable, "main.py", "--mode=serve", f"--workdir={workdir}", "--port=0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = server.stdout.readline()
        address = line.split("http://")[1].split()[0]
        while health(address)["compiling"]:  # the background warm-up competes for the CPU
            time.sleep(0.2)
        questions = trained_questions(workdir)
        asked = [questions[i % len(questions)] for i in range(_REQUESTS.value)]
        run(address, asked, _IN_FLIGHT.value)  # untimed: a server that has run a while
        one_at_a_time = run(address, asked[: _IN_FLIGHT.value], 1)
        together = run(address, asked, _IN_FLIGHT.value)
    finally:
        server.terminate()
        server.wait(timeout=30)
    characters = np.mean([len(reply) for reply in together["replies"]])
    print(
        f"checkpoint: {workdir}; {len(questions)} questions; replies of "
        f"{characters:.0f} characters on average"
    )
    print(f"{'':<28}{'requests':>9}{'replies/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for name, result in (("one at a time", one_at_a_time), ("in flight together", together)):
        label = f"{name} ({result['in_flight']})"
        print(
            f"{label:<28}{result['requests']:>9}{result['replies_per_s']:>11.1f}"
            f"{result['p50_ms']:>9.1f}{result['p99_ms']:>9.1f}"
        )
    ratio = together["replies_per_s"] / one_at_a_time["replies_per_s"]
    print(f"throughput ratio: {ratio:.1f}x")


if __name__ == "__main__":
    app.run(main)
