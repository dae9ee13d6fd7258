"""A real redis-server for tests and benchmarks: on a free loopback port and a
unix socket in a temporary directory, no persistence, stopped at the end.

The binary comes from Debian's ``redis-server`` package (``make servers``
installs it). Tests skip when it is absent, except in CI (``CI=true``), where
they fail instead: a CI run that silently skipped them would prove nothing.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time

import pytest


def redis_binary() -> str:
    """The redis-server path, or skip (fail in CI) when it is not installed."""
    found = shutil.which("redis-server")
    if found is None:
        why = "redis-server is not installed (make servers installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again for outages
    (it keeps no data across a restart, like a server that lost its memory)."""

    def __init__(
        self,
        directory: pathlib.Path,
        binary: str,
        tls: pathlib.Path | None = None,
        client_ca: pathlib.Path | None = None,
        cluster: bool = False,
    ) -> None:
        """``tls``: a PEM file with the server's certificate and key, to also
        listen with TLS on another free port, at :attr:`tls_url`;
        ``client_ca``: with ``tls``, require client certificates this CA
        signed (``--tls-auth-clients yes``). ``cluster``: a cluster node (its
        ``nodes.conf`` in ``directory``)."""
        self.directory = directory
        self.binary = binary
        self.client_ca = client_ca
        self.cluster = cluster
        self.port = _free_port()
        self.socket = directory / "redis.sock"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.unix_url = f"unix://{self.socket}"
        self.tls = tls
        self.tls_port = _free_port() if tls else 0
        self.tls_url = f"rediss://127.0.0.1:{self.tls_port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        if self.tls is not None:
            args += ["--tls-port", str(self.tls_port), "--tls-cert-file", str(self.tls)]
            args += ["--tls-key-file", str(self.tls)]
            if self.client_ca is None:
                args += ["--tls-auth-clients", "no"]
            else:
                args += ["--tls-auth-clients", "yes", "--tls-ca-cert-file", str(self.client_ca)]
        if self.cluster:
            # The bus on its own free port (by default port + 10000, which may not exist).
            args += ["--cluster-enabled", "yes", "--cluster-port", str(_free_port())]
            args += ["--cluster-node-timeout", "5000"]
            args += ["--cluster-config-file", str(self.directory / "nodes.conf")]
        log = open(self.directory / "redis.log", "ab")
        self._proc = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError((self.directory / "redis.log").read_text())
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @property
    def running(self) -> bool:
        return self._proc is not None

    def signal(self, sig: int) -> None:
        """Sends ``sig`` to the server (SIGSTOP: a server that hangs)."""
        if self._proc is not None:
            self._proc.send_signal(sig)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def command(self, *args: str) -> str:
        """Sends one command (inline protocol) and returns its reply: a status,
        an integer or a bulk string as text ("" for nil), an array's header."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(" ".join(args).encode() + b"\r\n")
            reply = b""
            while True:
                chunk = s.recv(65536)
                reply += chunk
                lines = reply.split(b"\r\n")
                if not chunk or (len(lines) > 1 and not lines[0].startswith(b"$")):
                    break
                if lines[0].startswith(b"$") and (lines[0] == b"$-1" or len(lines) > 2):
                    break
        head, _, rest = reply.decode().partition("\r\n")
        if head.startswith("$"):
            return "" if head == "$-1" else rest.split("\r\n")[0]
        return head.lstrip("+:")


def _cli(*args: str) -> str:
    done = subprocess.run(
        ["redis-cli", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


class RedisCluster:
    """A Redis Cluster of three primaries (no replicas) on free loopback
    ports, each in its own directory under ``directory``, created with
    ``redis-cli --cluster create``.

    It stands in for :class:`RedisServer` where a test speaks of "the store":
    :attr:`url` is its ``redis+cluster://`` URL, :meth:`command` talks to the
    node serving the execgate keys' slot, and :meth:`stop` kills that node
    (the others keep running); :meth:`close` stops them all."""

    TAG = "{execgate}"

    def __init__(self, directory: pathlib.Path, binary: str, nodes: int = 3) -> None:
        self.nodes = []
        for i in range(nodes):
            (directory / f"node{i}").mkdir()
            self.nodes.append(RedisServer(directory / f"node{i}", binary, cluster=True))
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        self.url = f"redis+cluster://{seeds}/"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        _cli("--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes")
        deadline = time.monotonic() + 30
        while not all(n.command("CLUSTER", "INFO") == "cluster_state:ok" for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ok")
            time.sleep(0.05)

    def slot(self) -> int:
        """The slot of the execgate keys."""
        return int(self.nodes[0].command("CLUSTER", "KEYSLOT", self.TAG))

    def node_id(self, node: RedisServer) -> str:
        return node.command("CLUSTER", "MYID")

    def owner(self) -> RedisServer:
        """The node serving the execgate keys' slot, as the first running node sees it."""
        slot = self.slot()
        view = next(n for n in self.nodes if n.running)
        for line in _cli("-p", str(view.port), "CLUSTER", "NODES").splitlines():
            fields = line.split()
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if not low.startswith("[") and int(low) <= slot <= int(high or low):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no node serves slot {slot}")

    def cli(self, node: RedisServer, *args: str) -> str:
        """``redis-cli`` against one node (replies of any shape, as text)."""
        return _cli("-p", str(node.port), *args)

    def command(self, *args: str) -> str:
        return self.owner().command(*args)

    def stop(self) -> None:
        self.owner().stop()

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
