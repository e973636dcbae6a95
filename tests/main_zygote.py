"""main.py processes forked from one that has already imported the project (a zygote).

Starting `python main.py` costs about 1.3 s of imports (JAX, Flax, optax, orbax, the
server) before main.py runs a line of its own; the suite starts it about a hundred times.
A zygote imports those modules once, never touches a device (JAX's backends start in the
child, after the fork), and forks a child per run: the child takes the caller's stdin,
stdout, stderr, working directory, environment and arguments, and runs main.py as
`python main.py` would (`__main__`, its own flags, exit status, atexit handlers). Runs
whose environment changes what JAX reads at import time go to a fresh interpreter instead
(`conftest.main_command` decides). tests/zygote_client.py is the process a test starts
in place of `python main.py`.

    python -m tests.main_zygote SOCKET   # prints "ready" once it listens
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import json
import os
import runpy
import signal
import socket
import struct
import sys
import threading
import traceback
from pathlib import Path

MAIN = Path(__file__).resolve().parent.parent / "main.py"
HEADER = struct.Struct("!I")
PRELOADED = (
    "absl.app",
    "matplotlib.backends.backend_agg",
    "matplotlib.figure",
    "tensorboardX",
    "tinytx_jax.commands",
)  # the length of the JSON request that follows


def _stdio(fd: int, mode: str, errors: str) -> io.TextIOWrapper:
    """A text stream on `fd` as the interpreter makes one at start-up for a pipe (without
    a buffer under PYTHONUNBUFFERED)."""
    raw = io.FileIO(fd, mode, closefd=False)
    if mode == "r":
        return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors=errors)
    if os.environ.get("PYTHONUNBUFFERED"):
        return io.TextIOWrapper(raw, encoding="utf-8", errors=errors, write_through=True)
    return io.TextIOWrapper(
        io.BufferedWriter(raw), encoding="utf-8", errors=errors, line_buffering=os.isatty(fd)
    )


def _exit_code(exit_value: object) -> int:
    if exit_value is None:
        return 0
    if isinstance(exit_value, int):
        return exit_value
    print(exit_value, file=sys.stderr)
    return 1


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become `python main.py ARGS` and never return."""
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.stdin = sys.__stdin__ = _stdio(0, "r", "strict")
        sys.stdout = sys.__stdout__ = _stdio(1, "w", "strict")
        sys.stderr = sys.__stderr__ = _stdio(2, "w", "backslashreplace")
        sys.argv = [str(MAIN), *request["args"]]
        sys.path[0] = str(MAIN.parent)
        try:
            runpy.run_path(str(MAIN), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = _exit_code(exit_.code)
        except KeyboardInterrupt:
            traceback.print_exc()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:
            traceback.print_exc()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                code = code or 120  # as the interpreter exits when stdout cannot be flushed
    finally:
        os._exit(code)


def _watch(connection: socket.socket, pid: int) -> None:
    """Send the child's exit status (negative: the signal that ended it) once it ends;
    kill it if its client goes first (the client was killed: so is its run)."""
    ended = threading.Event()

    def client_gone() -> None:
        with contextlib.suppress(OSError):
            connection.recv(1)  # the client sends nothing more: this returns at its end
        if not ended.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    threading.Thread(target=client_gone, daemon=True).start()
    _, status = os.waitpid(pid, 0)
    ended.set()
    with contextlib.suppress(OSError):
        connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    connection.close()


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    (length,) = HEADER.unpack(data[: HEADER.size])
    body = data[HEADER.size :]
    while len(body) < length:
        body += connection.recv(length - len(body))
    return json.loads(body), fds


def serve(path: str) -> None:
    """Import what main.py imports, then fork a child per request on the socket `path`."""
    # main.py's imports, and what training and plotting import on demand; not main.py
    # itself: each child defines its flags.
    for name in PRELOADED:
        importlib.import_module(name)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        connection, _ = listener.accept()
        request, fds = _receive(connection)
        pid = os.fork()
        if pid == 0:
            listener.close()
            connection.close()
            _run_child(request, fds)
        for fd in fds:
            os.close(fd)
        connection.sendall(f"{pid}\n".encode())
        threading.Thread(target=_watch, args=(connection, pid), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1])
