"""``execgate mcp``: builds the gate, the gateway and the transport from the
command line (the subparser lives in :mod:`execgate.cli`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from execgate.cli import SANDBOX_FLAGS, sandbox_from_flags
from execgate.errors import SandboxError
from execgate.sandbox import Sandbox, parse_size

__all__ = ["main", "sandbox_from"]

EXIT_ERROR, EXIT_SANDBOX = 2, 125


def _say(message: str) -> None:
    print(f"execgate mcp: {message}", file=sys.stderr, flush=True)


def sandbox_from(args: argparse.Namespace) -> Sandbox | None:
    """The sandbox the flags ask for (``execgate run``'s flags), or None when
    no sandbox flag was given."""
    wanted = (
        args.sandbox
        or args.read
        or args.write
        or args.strict
        or args.env
        or args.intercept_tls
        or args.credential
        or args.upstream_ca
        or any(getattr(args, f) is not None for f in SANDBOX_FLAGS)
    )
    if not wanted:
        return None
    box: Sandbox = sandbox_from_flags(args)
    return box


def _principal(args: argparse.Namespace) -> dict[str, Any] | None:
    return {"id": args.principal, "roles": args.role} if args.principal else None


def main(args: argparse.Namespace) -> int:
    """Runs ``execgate mcp`` with parsed arguments; returns the exit status."""
    from execgate.gate import Gate
    from execgate.integrations.mcp import gateway_for

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if args.log and not args.key:
        _say("--log needs --key")
        return EXIT_ERROR
    http = args.listen is not None
    if args.upstream is not None and (not http or command):
        _say("--upstream URL goes with --listen HOST:PORT and no command")
        return EXIT_ERROR
    if not command and args.upstream is None:
        _say("give the MCP server's command after --, or --listen and --upstream")
        return EXIT_ERROR
    max_message = parse_size(args.max_message)
    if max_message is None:
        raise ValueError("--max-message needs a size")
    box = sandbox_from(args)
    if args.upstream is not None and box is not None:
        _say(
            "sandbox flags confine a server the gateway starts (-- COMMAND); "
            "an --upstream URL runs on its own"
        )
        return EXIT_ERROR
    gate = Gate(
        args.policy,
        data=args.data or None,
        entrypoint=args.entrypoint,
        key=args.key,
        audit=args.log,
    )
    try:
        gateway = gateway_for(
            gate, args.policy, data=args.data or None, visible=args.visible, log=_say
        )
        if http:
            return _serve_http(args, gateway, command, box, max_message)
        from execgate.integrations.mcp.stdio import StdioProxy

        proxy = StdioProxy(
            gateway,
            command,
            principal=_principal(args),
            sandbox=box,
            max_message=max_message,
            approval_timeout=args.approval_timeout,
            log=_say,
        )
        try:
            return proxy.run()
        except SandboxError as e:
            _say(str(e))
            return EXIT_SANDBOX
        except KeyboardInterrupt:
            return 130
    finally:
        gate.close()


def _serve_http(
    args: argparse.Namespace,
    gateway: Any,
    command: list[str],
    box: Sandbox | None,
    max_message: int,
) -> int:
    try:
        from execgate.integrations.mcp.http import serve
    except ImportError as e:
        _say(f"the HTTP gateway needs the mcp extra: pip install 'execgate[mcp]' ({e})")
        return EXIT_ERROR
    if args.tokens is None:
        _say("--tokens FILE is required over HTTP: the principal comes from a bearer token")
        return EXIT_ERROR
    spawn: dict[str, Any] = {}
    if args.upstream is None:
        spawn = {"max_sessions": args.max_sessions, "idle": args.session_idle}
    return serve(
        gateway,
        listen=args.listen,
        upstream=args.upstream,
        command=command,
        sandbox=box,
        tokens=args.tokens,
        max_message=max_message,
        approval_timeout=args.approval_timeout,
        **spawn,
    )
