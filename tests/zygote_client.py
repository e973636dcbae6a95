"""`python -S tests/zygote_client.py SOCKET ARGS...`: run `main.py ARGS` forked from the
zygote on SOCKET (tests/main_zygote.py), as if this process were it.

Standard library only, started without site-packages: it hands its stdin, stdout,
stderr, working directory and environment to the zygote's child, passes SIGINT and
SIGTERM on to it, and ends as the child ends (its exit status, or the same signal).
Killed outright, it closes the socket, and the zygote kills the child.
"""

import json
import os
import signal
import socket
import struct
import sys


def main() -> None:
    path, args = sys.argv[1], sys.argv[2:]
    request = json.dumps({"args": args, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(path)
    socket.send_fds(connection, [struct.pack("!I", len(request)) + request], [0, 1, 2])
    replies = connection.makefile("r")
    pid = int(replies.readline())
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda received, _: os.kill(pid, received))
    code = int(replies.readline())
    if code < 0:  # ended by a signal: end by the same one
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    main()
