"""``execgate mcp -- COMMAND``: the gateway over stdio.

The real MCP server runs as a child (optionally inside an
:class:`execgate.Sandbox`); the proxy speaks MCP on its own stdin/stdout,
relays every line in both directions and hands each message to the
:class:`~execgate.integrations.mcp._gateway.Gateway`. The server's stderr
passes straight through.

Messages are newline-delimited JSON, as the stdio transport defines them. A
line longer than ``max_message`` bytes is never parsed: from the client it is
refused, from the server it is withheld (and the call it answers fails).

Under a sandbox the server's stdin and stdout are two named pipes in a private
directory (the sandbox runner gives a child no other descriptors than
stdio), and ``/bin/sh`` connects them before it ``exec``s the server; the
server's stderr streams through the runner.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    CancelledError,
    Future,
    InvalidStateError,
    ThreadPoolExecutor,
    wait,
)
from typing import TYPE_CHECKING, Any

from execgate.integrations.mcp._gateway import (
    DEFAULT_MAX_MESSAGE,
    INVALID_REQUEST,
    PARSE_ERROR,
    Forward,
    Gateway,
    Hold,
    Reply,
    Session,
    elicit_result,
    encode,
    error,
    head_id,
)

if TYPE_CHECKING:
    from execgate.sandbox import Completed, Sandbox

__all__ = ["StdioProxy"]

_CHUNK = 1 << 16


class _Lines:
    """Splits a byte stream into lines, refusing to hold more than ``cap``
    bytes of one: a longer line comes out as ``(head, size)``."""

    __slots__ = ("buf", "cap", "head", "skipped")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.head: bytes | None = None
        self.skipped = 0

    def feed(self, data: bytes) -> list[bytes | tuple[bytes, int]]:
        out: list[bytes | tuple[bytes, int]] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            piece = data[start:nl]
            start = nl + 1
            if self.head is not None:
                out.append((self.head, self.skipped + len(piece)))
                self.head, self.skipped = None, 0
            elif self.buf:
                self.buf += piece
                line = bytes(self.buf)
                self.buf.clear()
                out.append(line if len(line) <= self.cap else (line[:512], len(line)))
            elif len(piece) > self.cap:
                out.append((piece[:512], len(piece)))
            else:
                out.append(piece)
        rest = data[start:]
        if self.head is not None:
            self.skipped += len(rest)
        elif rest:
            self.buf += rest
            if len(self.buf) > self.cap:
                self.head, self.skipped = bytes(self.buf[:512]), len(self.buf)
                self.buf.clear()
        return out


def _dumps(msg: Any) -> bytes:
    return encode(msg) + b"\n"


class _Out:
    """Whole messages to one file descriptor, from any thread; a write that
    fails (the reader went away) closes it for good."""

    __slots__ = ("fd", "lock", "open", "owned")

    def __init__(self, fd: int, *, owned: bool) -> None:
        self.fd = fd
        self.owned = owned
        self.lock = threading.Lock()
        self.open = True

    def write(self, data: bytes) -> bool:
        with self.lock:
            if not self.open:
                return False
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError:
                self.open = False
                return False
            return True

    def close(self) -> None:
        with self.lock:
            if self.open and self.owned:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
            self.open = False


def _nothing() -> None:
    pass


class StdioProxy:
    """Relays one MCP session between ``client_in``/``client_out`` (file
    descriptors, the proxy's stdin and stdout by default; others than 0-2
    are the proxy's to close) and the server started from ``command``.

    Each direction is one thread doing blocking reads and writes on the raw
    descriptors: a message is handed on as soon as its line is complete, and
    one that passes through unchanged is written as it was read. Only the
    gateway's decisions take a lock (the two directions share the session).

    ``approval_timeout`` bounds how long a call waits for the human's answer
    to an elicitation; ``grace`` how long the server may take to finish the
    calls in flight after the client went away.
    """

    def __init__(
        self,
        gateway: Gateway,
        command: Sequence[str],
        *,
        principal: dict[str, Any] | None = None,
        sandbox: Sandbox | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        approval_timeout: float = 300.0,
        grace: float = 5.0,
        client_in: int = 0,
        client_out: int = 1,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not command:
            raise ValueError("give the MCP server's command")
        self.gateway = gateway
        self.command = list(command)
        self.session = Session(principal=principal)
        self.sandbox = sandbox
        self.max_message = max_message
        self.approval_timeout = approval_timeout
        self.grace = grace
        self.client_in = client_in
        self.log = log or (lambda line: print(f"execgate mcp: {line}", file=sys.stderr, flush=True))
        self.completed: Completed | None = None
        self._lock = threading.Lock()  # the session: both directions and the approvals
        self._asked: dict[str, Future[Any]] = {}
        self._holds: list[threading.Thread] = []
        self._to_client = _Out(client_out, owned=client_out > 2)
        self._to_server: _Out | None = None
        self._ended: queue.SimpleQueue[str] = queue.SimpleQueue()

    # -- writing ---------------------------------------------------------------

    def _send_server(self, data: bytes) -> None:
        if self._to_server is None or not self._to_server.write(data):
            self.log("the server's stdin is closed; a message was not delivered")

    def _reply(self, message: Any) -> None:
        if message is not None:
            self._to_client.write(_dumps(message))

    # -- client -> server ------------------------------------------------------

    def _from_client(self, line: bytes | tuple[bytes, int]) -> None:
        if isinstance(line, tuple):
            head, size = line
            self.log(
                f"refused a client message of {size} bytes (over the {self.max_message}-byte cap)"
            )
            id_ = head_id(head)
            self._reply(
                error(
                    id_,
                    INVALID_REQUEST,
                    f"message of {size} bytes exceeds the gateway's {self.max_message}-byte cap",
                )
            )
            return
        if not line.strip():
            return
        try:
            msg = json.loads(line)
        except ValueError:
            self.log("refused a line that is not JSON")
            self._reply(error(None, PARSE_ERROR, "not JSON"))
            return
        if isinstance(msg, dict) and "method" not in msg and isinstance(msg.get("id"), str):
            future = self._asked.pop(msg["id"], None)
            if future is not None:  # the client's answer to our elicitation
                with contextlib.suppress(InvalidStateError):
                    future.set_result(msg)
                return
        with self._lock:
            verdict = self.gateway.inbound(self.session, msg)
        if isinstance(verdict, Forward):
            self._send_server(_dumps(verdict.message))  # what was decided, not the bytes
        elif isinstance(verdict, Reply):
            self._reply(verdict.message)
        else:
            future = Future()
            self._asked[verdict.ask_id] = future
            thread = threading.Thread(
                target=self._approve,
                args=(verdict, future),
                name="execgate-mcp-approval",
                daemon=True,
            )
            self._holds.append(thread)
            thread.start()

    def _approve(self, hold: Hold, future: Future[Any]) -> None:
        """Asks the client (``elicitation/create``) and decides the held call;
        no answer in time, or the session ending first, denies it."""
        answer: Any = None
        try:
            self._reply(hold.request())
            answer = elicit_result(future.result(self.approval_timeout))
        except TimeoutError:
            self.log(f"no answer to the approval of tool call id {hold.message['id']!r}")
        except CancelledError:
            pass
        finally:
            self._asked.pop(hold.ask_id, None)
        with self._lock:
            verdict = self.gateway.answer(self.session, hold, answer)
        if isinstance(verdict, Forward):
            self._send_server(_dumps(verdict.message))
        else:
            self._reply(verdict.message)

    # -- server -> client ------------------------------------------------------

    def _from_server(self, line: bytes | tuple[bytes, int]) -> None:
        if isinstance(line, tuple):
            head, _size = line
            # The whole line is gone; only its head was kept, which is all
            # head_id needs to fail the call it answers.
            with self._lock:
                out = self.gateway.oversized(self.session, head, self.max_message)
            for item in out:
                self._reply(item)
            return
        if not self.session.pending:  # nothing in flight to watch: as it came
            self._to_client.write(line + b"\n")
            return
        try:
            msg = json.loads(line)
        except ValueError:
            self.log("dropped a line from the server that is not JSON")
            return
        with self._lock:
            out = self.gateway.outbound(self.session, msg)
        if len(out) == 1 and out[0] is msg:
            self._to_client.write(line + b"\n")
        else:
            for item in out:
                self._reply(item)
        if self.session.answered:
            with self._lock:
                self.gateway.finish(self.session)

    # -- running ----------------------------------------------------------------

    def _pump(
        self, fd: int, handle: Callable[[bytes | tuple[bytes, int]], None], side: str
    ) -> None:
        lines = _Lines(self.max_message)
        try:
            while True:
                try:
                    data = os.read(fd, _CHUNK)
                except OSError:
                    data = b""
                if not data:
                    return
                for line in lines.feed(data):
                    handle(line)
        finally:
            if side == "client" and fd > 2:
                # Ours to close, by the only thread that reads it, after its last read.
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._ended.put(side)

    def _fail_pending(self, why: str, error_type: str) -> None:
        with self._lock:
            out = self.gateway.fail_pending(self.session, why, error_type)
        for item in out:
            self._reply(item)

    def _end_approvals(self) -> None:
        """No answer can come any more: every held call is decided (denied)."""
        for future in list(self._asked.values()):
            future.cancel()
        for thread in self._holds:
            thread.join(self.grace)

    def run(self) -> int:
        """Relays until either side is done; returns the server's exit status."""
        proc: subprocess.Popen[bytes] | None = None
        exited: Future[Any] | None = None
        cleanup: Callable[[], None] = _nothing
        try:
            if self.sandbox is None:
                proc = subprocess.Popen(
                    self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
                )
                if proc.stdin is None or proc.stdout is None:
                    raise RuntimeError("the server's stdio pipes were not created")
                fd_in, fd_out = proc.stdin.fileno(), proc.stdout.fileno()
            else:
                fd_in, fd_out, exited, cleanup = self._start_sandboxed()
        except BaseException:
            self._to_client.close()  # the client's side ends too
            if self.client_in > 2:  # no pump reads it yet
                with contextlib.suppress(OSError):
                    os.close(self.client_in)
            raise
        self._to_server = _Out(fd_in, owned=proc is None)
        server = threading.Thread(
            target=self._pump, args=(fd_out, self._from_server, "server"), daemon=True
        )
        client = threading.Thread(
            target=self._pump, args=(self.client_in, self._from_client, "client"), daemon=True
        )
        server.start()
        client.start()
        try:
            if self._ended.get() == "client":
                # The client went away: let the server finish what is in flight.
                self._end_approvals()
                self._to_server.close()
                if proc is not None and proc.stdin is not None:
                    proc.stdin.close()
                server.join(self.grace)
                if server.is_alive():
                    self.log("the server did not exit after the client left; stopping it")
                self._fail_pending("the client disconnected", "client_disconnected")
                status = self._stop(proc, exited, 0.0)
            else:
                self._end_approvals()
                self._fail_pending("the MCP server exited", "server_exited")
                status = self._stop(proc, exited, self.grace)
        finally:
            self._to_client.close()
            cleanup()
        if proc is not None:
            return int(proc.returncode) if proc.returncode is not None else 1
        self.completed = status
        if status is None:
            return 1
        if status.signal is not None:
            return 128 + int(status.signal)
        return int(status.exit_code) if status.exit_code is not None else 1

    def _stop(
        self, proc: subprocess.Popen[bytes] | None, exited: Future[Any] | None, patience: float
    ) -> Any:
        """Waits ``patience`` seconds for the server to exit, then stops it."""
        if proc is not None:
            try:
                proc.wait(patience)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(self.grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            return None
        if exited is None:
            return None
        try:
            return exited.result(self.grace)
        except TimeoutError:
            return None

    def _start_sandboxed(
        self,
    ) -> tuple[int, int, Future[Any], Callable[[], None]]:
        """Starts the server in the sandbox, its stdio on two named pipes."""
        box = self.sandbox
        if box is None:
            raise RuntimeError("no sandbox to start the server in")
        fifo_dir = tempfile.mkdtemp(prefix="execgate-mcp-")
        os.mkfifo(os.path.join(fifo_dir, "in"), 0o600)
        os.mkfifo(os.path.join(fifo_dir, "out"), 0o600)
        from dataclasses import replace

        box = replace(box, write=(*box.write, fifo_dir), stream=True)
        argv = [
            "/bin/sh",
            "-c",
            'd=$1; shift; exec "$@" <"$d/in" >"$d/out"',
            "execgate-mcp",
            fifo_dir,
            *self.command,
        ]
        run: Callable[[], Any] = functools.partial(box.run, argv)
        if box.network == "proxy":
            # Its outbound requests are decided too (no single tool call made
            # them: context.parent is None).
            from execgate.gate import behind_proxy

            run = functools.partial(
                behind_proxy,
                self.gateway.gate.pipeline,
                box,
                argv,
                principal=self.session.principal,
            )
        pool = ThreadPoolExecutor(3, thread_name_prefix="execgate-mcp-start")
        exited: Future[Any] = pool.submit(run)
        opens: list[Future[Any]] = [
            pool.submit(os.open, os.path.join(fifo_dir, "in"), os.O_WRONLY),
            pool.submit(os.open, os.path.join(fifo_dir, "out"), os.O_RDONLY),
        ]
        pool.shutdown(wait=False)
        while not exited.done() and not all(f.done() for f in opens):
            wait([f for f in (exited, *opens) if not f.done()], return_when=FIRST_COMPLETED)
        if not all(f.done() for f in opens):
            # The server never opened its pipes (the sandbox failed): release the opens.
            for name, flags in (
                ("in", os.O_RDONLY | os.O_NONBLOCK),
                ("out", os.O_RDWR | os.O_NONBLOCK),
            ):
                with contextlib.suppress(OSError):
                    os.close(os.open(os.path.join(fifo_dir, name), flags))
            for f in opens:
                os.close(f.result())
            shutil.rmtree(fifo_dir, ignore_errors=True)
            exited.result()  # raises the SandboxError
            raise RuntimeError("the MCP server exited before it opened its stdio")
        fd_in, fd_out = (f.result() for f in opens)

        def cleanup() -> None:
            os.close(fd_out)
            shutil.rmtree(fifo_dir, ignore_errors=True)

        return fd_in, fd_out, exited, cleanup
