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

import asyncio
import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
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
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class StdioProxy:
    """Relays one MCP session between ``client_in``/``client_out`` (file
    descriptors, the proxy's stdin and stdout by default) and the server
    started from ``command``.

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
        self.client_in, self.client_out = client_in, client_out
        self.log = log or (lambda line: print(f"execgate mcp: {line}", file=sys.stderr, flush=True))
        self.completed: Completed | None = None
        self._asked: dict[str, asyncio.Future[Any]] = {}
        self._holds: set[asyncio.Task[None]] = set()
        self._to_client: asyncio.StreamWriter | None = None
        self._to_server: asyncio.StreamWriter | None = None
        self._client_gone = False

    # -- writing ---------------------------------------------------------------

    def _send_client(self, data: bytes) -> None:
        if self._to_client is None or self._client_gone:
            return
        try:
            self._to_client.write(data)
        except (ConnectionError, RuntimeError, OSError):
            self._client_gone = True

    def _send_server(self, data: bytes) -> None:
        if self._to_server is None:
            return
        try:
            self._to_server.write(data)
        except (ConnectionError, RuntimeError, OSError):
            self.log("the server's stdin is closed; a message was not delivered")

    def _reply(self, message: Any) -> None:
        if message is not None:
            self._send_client(_dumps(message))

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
                if not future.done():
                    future.set_result(msg)
                return
        verdict = self.gateway.inbound(self.session, msg)
        if isinstance(verdict, Forward):
            self._send_server(line + b"\n" if verdict.message is msg else _dumps(verdict.message))
        elif isinstance(verdict, Reply):
            self._reply(verdict.message)
        else:
            task = asyncio.get_running_loop().create_task(self._approve(verdict))
            self._holds.add(task)
            task.add_done_callback(self._holds.discard)

    async def _approve(self, hold: Hold) -> None:
        """Asks the client (``elicitation/create``) and decides the held call."""
        ask_id = f"execgate-approval-{uuid.uuid4().hex}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asked[ask_id] = future
        self._reply(
            {
                "jsonrpc": "2.0",
                "id": ask_id,
                "method": "elicitation/create",
                "params": hold.elicitation,
            }
        )
        answer: Any = None
        try:
            response = await asyncio.wait_for(future, self.approval_timeout)
            answer = (
                response.get("result")
                if isinstance(response.get("result"), dict)
                else {"action": "error"}
            )
        except asyncio.TimeoutError:
            self.log(f"no answer to the approval of tool call id {hold.message['id']!r}")
        finally:
            self._asked.pop(ask_id, None)
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
            for out in self.gateway.oversized(self.session, head, self.max_message):
                self._reply(out)
            return
        if not self.session.pending:
            self._send_client(line + b"\n")
            return
        try:
            msg = json.loads(line)
        except ValueError:
            self.log("dropped a line from the server that is not JSON")
            return
        out = self.gateway.outbound(self.session, msg)
        if len(out) == 1 and out[0] is msg:
            self._send_client(line + b"\n")
        else:
            for item in out:
                self._reply(item)

    # -- running ----------------------------------------------------------------

    async def run(self) -> int:
        """Relays until either side is done; returns the server's exit status."""
        loop = asyncio.get_running_loop()
        client_reader = await _reader(self.client_in)
        self._to_client = await _writer(self.client_out)
        if self.sandbox is None:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
            if proc.stdin is None or proc.stdout is None:
                raise RuntimeError("the server's stdio pipes were not created")
            self._to_server = proc.stdin
            server_reader: asyncio.StreamReader = proc.stdout
            exited: asyncio.Future[Any] = asyncio.ensure_future(proc.wait())
        else:
            server_reader, self._to_server, exited, cleanup = await self._start_sandboxed()
            proc = None
        client_task = loop.create_task(self._pump(client_reader, self._from_client))
        server_task = loop.create_task(self._pump(server_reader, self._from_server))
        try:
            done, _ = await asyncio.wait(
                {client_task, server_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if client_task in done:
                # The client went away: let the server finish what is in flight.
                with contextlib.suppress(Exception):
                    self._to_server.close()
                try:
                    await asyncio.wait_for(asyncio.shield(server_task), self.grace)
                except asyncio.TimeoutError:
                    self.log("the server did not exit after the client left; stopping it")
                for out in self.gateway.fail_pending(
                    self.session, "the client disconnected", "client_disconnected"
                ):
                    self._reply(out)
            else:
                for out in self.gateway.fail_pending(
                    self.session, "the MCP server exited", "server_exited"
                ):
                    self._reply(out)
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            try:
                status = await asyncio.wait_for(asyncio.shield(exited), self.grace)
            except asyncio.TimeoutError:
                if proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    status = await exited
                else:
                    status = None
        finally:
            for task in (client_task, server_task, *self._holds):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._to_client.drain()
            self._to_client.close()
            if self.sandbox is not None:
                cleanup()
        if proc is not None:
            return int(proc.returncode) if proc.returncode is not None else 1
        self.completed = status
        if status is None:
            return 1
        if status.signal is not None:
            return 128 + int(status.signal)
        return int(status.exit_code) if status.exit_code is not None else 1

    async def _pump(
        self, reader: asyncio.StreamReader, handle: Callable[[bytes | tuple[bytes, int]], None]
    ) -> None:
        lines = _Lines(self.max_message)
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                return
            for line in lines.feed(data):
                handle(line)
            if self._to_client is not None:
                try:
                    await self._to_client.drain()
                except (ConnectionError, OSError):
                    self._client_gone = True

    async def _start_sandboxed(
        self,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Future[Any], Callable[[], None]]:
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
            exited = asyncio.ensure_future(asyncio.to_thread(run))
        else:
            exited = asyncio.ensure_future(asyncio.to_thread(box.run, argv))
        opened = asyncio.ensure_future(
            asyncio.gather(
                asyncio.to_thread(os.open, os.path.join(fifo_dir, "in"), os.O_WRONLY),
                asyncio.to_thread(os.open, os.path.join(fifo_dir, "out"), os.O_RDONLY),
            )
        )
        either: set[asyncio.Future[Any]] = {exited, opened}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not opened.done():
            # The server never opened its pipes (the sandbox failed): release the opens.
            for name, flags in (
                ("in", os.O_RDONLY | os.O_NONBLOCK),
                ("out", os.O_RDWR | os.O_NONBLOCK),
            ):
                with contextlib.suppress(OSError):
                    os.close(os.open(os.path.join(fifo_dir, name), flags))
            fds = await opened
            for fd in fds:
                os.close(fd)
            shutil.rmtree(fifo_dir, ignore_errors=True)
            exited.result()  # raises the SandboxError
            raise RuntimeError("the MCP server exited before it opened its stdio")
        fd_in, fd_out = opened.result()
        reader = await _reader(fd_out)
        writer = await _writer(fd_in)
        return reader, writer, exited, lambda: shutil.rmtree(fifo_dir, ignore_errors=True)


async def _reader(fd: int) -> asyncio.StreamReader:
    """An asyncio reader over a pipe (or, failing that, a thread over any fd)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_CHUNK * 4)
    try:
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader),
            os.fdopen(fd, "rb", buffering=0, closefd=fd > 2),
        )
    except (ValueError, OSError):

        async def feed() -> None:
            while True:
                data = await asyncio.to_thread(os.read, fd, _CHUNK)
                if not data:
                    reader.feed_eof()
                    return
                reader.feed_data(data)

        task = loop.create_task(feed())
        reader._execgate_feeder = task  # type: ignore[attr-defined]  # keeps the task alive
    return reader


async def _writer(fd: int) -> asyncio.StreamWriter:
    """An asyncio writer over a pipe."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", buffering=0, closefd=fd > 2)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)
