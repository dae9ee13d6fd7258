"""The egress privacy router: the only way out of a ``Sandbox(network="proxy")``.

The tool runs in a private network namespace with only loopback
(``execgate._core.private_network``). Inside it, on ``127.0.0.1:PORT``, is a
listening socket that this process holds; nothing else connects that namespace
to any network. :class:`EgressProxy` accepts the tool's connections on it and
makes its own connections from the gate's network, only for requests the
policy allowed. The tool is told where it is through ``HTTP_PROXY``,
``HTTPS_PROXY`` and ``ALL_PROXY`` (and their lowercase forms); a tool that
ignores them has nowhere else to go.

Every request is a call through the gate's pipeline (``gate.pipeline``): action
``net.request``, arguments ``{method, scheme, host, port, path, query,
header_names, body_sha256, body_size, body}``, ``context.parent`` the receipt id
of the tool call that made it. ``body`` is passed as ``bytes``, so the policy
sees only its digest and size (the argument conversion rule for bytes) and the
log only the arguments' digest, while ``obligations.redact.args`` rewrites it
(as UTF-8 text; a finding in a binary body refuses the request) before it is
forwarded, and ``obligations.redact.output`` rewrites the response body before
the tool sees it: the pipeline interprets the obligations, this package
forwards what ``call.arguments()`` and ``call.redact_output()`` hand back. A
denied request gets ``403`` with the reasons; an allowed one is forwarded
inside ``Run``, whose completion record carries the status, bytes, duration
and the names of the credentials injected (:class:`execgate.Egress`). One
client connection carries any number of requests (keep-alive), each decided.

HTTPS: ``CONNECT host:port`` is decided on host and port (``scheme`` is
``"https"``, ``method`` ``"CONNECT"``, path, query and body empty) and tunnelled
without interception (its completion says ``inspected: false``), or, with
``Egress(intercept_tls=True)``, terminated with an ephemeral CA only the child
trusts (:mod:`execgate.egress.tls`) so that each request inside is decided with
``scheme`` ``"https"`` and forwarded over a verified TLS connection.

Fail closed: a request h11 cannot parse, one with both ``Content-Length`` and
``Transfer-Encoding`` (request smuggling), headers over :attr:`Bounds.header_bytes`,
a body over :attr:`Bounds.body_bytes`, a request not complete within
:attr:`Bounds.request_seconds`, or anything but an absolute ``http://`` URL or a
``CONNECT`` is answered with an error status, never decided and never
forwarded, and the connection is closed.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from execgate import _core
from execgate.egress.proxy import Bounds, EgressProxy, proxy_environment
from execgate.pipeline import Pipeline
from execgate.sandbox import Completed, Sandbox

__all__ = ["Bounds", "EgressProxy", "proxy_environment", "run_behind_proxy"]


def run_behind_proxy(
    pipeline: Pipeline,
    box: Sandbox,
    argv: Sequence[str],
    *,
    stdin: bytes | str | None = None,
    obligation: Mapping[str, Any] | None = None,
    principal: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    parent: str | None = None,
) -> Completed:
    """``box.run(argv)`` in a private network namespace whose only way out
    is an :class:`EgressProxy` deciding through ``pipeline``, served for the
    run's duration (``parent``: the receipt id its requests are linked to)."""
    namespace, listener_fd, port = _core.private_network()
    try:
        listener = socket.socket(fileno=listener_fd)
        try:
            proxy = EgressProxy(
                pipeline,
                listener,
                principal=principal,
                context=context,
                parent=parent,
                egress=box.egress,
            )
        except BaseException:
            listener.close()
            raise
        with proxy:
            boxed = dataclasses.replace(box, env={**(box.env or {}), **proxy.environment(port)})
            if proxy.interceptor is not None:
                boxed = dataclasses.replace(boxed, read=[*box.read, proxy.interceptor.directory])
            return boxed.run(argv, stdin=stdin, obligation=obligation, join_network=namespace)
    finally:
        os.close(namespace)
