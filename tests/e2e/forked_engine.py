"""``python -m prefect.engine`` forked from this pytest worker's fork server: the command of
test_service's work pools (``tests.e2e.cli.engine_command``), so a deployed flow run does not
import torch, Prefect and the campaign's modules again (~4 s of CPU each).

The Prefect worker starts this client as it would start the engine; the client hands its
environment, working directory and stdin/stdout/stderr to the fork server (``argv[1]``, the
server's socket) and stands in for the forked flow run: SIGTERM, SIGINT and SIGHUP are passed
on, and it exits as the flow run did (by the same signal if one ended it). If the client is
killed, the server kills the flow run.
"""

import json
import os
import signal
import socket
import sys

conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
conn.connect(sys.argv[1])
request = {"id": "engine", "argv": [sys.executable], "env": dict(os.environ),
           "cwd": os.getcwd(), "session": False}
socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
pid = json.loads(conn.recv(1 << 16))["pid"]


def _pass_on(sig: int, _frame: object) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it ended: its code is on its way


for passed in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(passed, _pass_on)
reply = conn.recv(1 << 16)  # retried after a signal's handler ran (PEP 475)
code = json.loads(reply)["code"] if reply else -signal.SIGKILL  # the server died: as if killed
if code < 0:  # ended by a signal: so does this process, for the worker to see the same
    if -code not in (signal.SIGKILL, signal.SIGSTOP):  # (those two cannot be handled anyway)
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
