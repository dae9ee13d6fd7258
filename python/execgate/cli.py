"""The ``execgate`` command line.

Exit codes: 0 success / allow / valid, 1 deny / invalid log, 2 usage or load error.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from execgate import __version__
from execgate.errors import ExecgateError

if TYPE_CHECKING:
    from execgate._core import VerifyReport

__all__ = ["main"]

EXIT_OK, EXIT_DENY, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors too
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


#: The network settings ``execgate run`` and ``execgate mcp`` accept besides ports.
NETWORKS = ("none", "host", "proxy")
#: Flags that ask for a sandbox (``execgate mcp`` runs its server unconfined without one).
SANDBOX_FLAGS = ("memory", "cpu", "wall", "processes", "file_size", "open_files", "network")


def add_sandbox_flags(parser: argparse.ArgumentParser) -> None:
    """The sandbox flags ``execgate run`` and ``execgate mcp`` share."""
    parser.add_argument("--memory", metavar="SIZE", help="e.g. 256M")
    parser.add_argument("--cpu", type=float, metavar="SECONDS")
    parser.add_argument("--wall", type=float, metavar="SECONDS")
    parser.add_argument("--processes", type=int, metavar="N")
    parser.add_argument("--file-size", metavar="SIZE")
    parser.add_argument("--open-files", type=int, metavar="N")
    parser.add_argument("--output", default="1M", metavar="SIZE", help="bytes of output kept")
    parser.add_argument("--network", metavar="|".join(NETWORKS) + "|PORT[,PORT...]")
    parser.add_argument("--read", action="append", default=[], metavar="DIR")
    parser.add_argument("--write", action="append", default=[], metavar="DIR")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this variable from the environment (repeatable)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="refuse to run without every protection"
    )
    parser.add_argument(
        "--intercept-tls",
        action="store_true",
        help="with --network proxy: decide and redact each HTTPS request (ephemeral CA)",
    )
    parser.add_argument(
        "--upstream-ca",
        action="append",
        default=[],
        metavar="PEM",
        help="another trust anchor for the proxy's own TLS connections (repeatable)",
    )
    parser.add_argument(
        "--credential",
        nargs=2,
        action="append",
        default=[],
        metavar=("ORIGIN", "HEADER=env:NAME|file:PATH"),
        help="a header the proxy adds to allowed requests to ORIGIN (repeatable)",
    )


def sandbox_from_flags(args: argparse.Namespace) -> Any:
    """The :class:`~execgate.Sandbox` the shared flags describe (ValueError for a
    bad ``--network``)."""
    from execgate.sandbox import DEFAULT_ENV, Limits, Sandbox

    network: Any = args.network or "none"
    if network not in NETWORKS:
        try:
            network = [int(p) for p in network.split(",")]
        except ValueError:
            raise ValueError(
                f"--network must be {', '.join(NETWORKS)} or ports, not {network!r}"
            ) from None
    return Sandbox(
        egress=_egress_from_flags(args, network),
        limits=Limits(
            cpu=args.cpu,
            memory=args.memory,
            file_size=args.file_size,
            open_files=args.open_files,
            processes=args.processes,
            wall=args.wall,
            output=args.output,
        ),
        read=args.read,
        write=args.write,
        network=network,
        env_allow=(*DEFAULT_ENV, *args.env),
        strict=args.strict,
        stream=True,
    )


def _egress_from_flags(args: argparse.Namespace, network: Any) -> Any:
    """The :class:`~execgate.Egress` of ``--intercept-tls``, ``--upstream-ca`` and
    ``--credential`` (secrets by reference only: a value on the command line
    would be visible to every process)."""
    from execgate.sandbox import Egress, Secret

    if (args.intercept_tls or args.upstream_ca or args.credential) and network != "proxy":
        raise ValueError("--intercept-tls, --upstream-ca and --credential need --network proxy")
    credentials: dict[str, dict[str, Secret]] = {}
    for origin, spec in args.credential:
        header, _, source = spec.partition("=")
        kind, _, where = source.partition(":")
        if kind not in ("env", "file") or not where or not header:
            raise ValueError(
                f"--credential {origin} {spec}: give HEADER=env:NAME or HEADER=file:PATH"
            )
        secret = Secret(env=where) if kind == "env" else Secret(file=where)
        credentials.setdefault(origin, {})[header] = secret
    return Egress(
        credentials=credentials, intercept_tls=args.intercept_tls, upstream_ca=args.upstream_ca
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="execgate", description="Action-level authorization for AI agents.")
    parser.add_argument("--version", action="version", version=f"execgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="evaluate one input document; print the decision")
    check.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="PATH",
        help="a .rego file or a directory (repeatable)",
    )
    check.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="FILE",
        help="a JSON or YAML data file (repeatable)",
    )
    check.add_argument("--entrypoint", default="data.execgate.decision")
    check.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="the input document as JSON, or - for standard input",
    )

    keygen = sub.add_parser("keygen", help="write a new Ed25519 key pair")
    keygen.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="directory for execgate.key (mode 0600) and execgate.pub",
    )
    keygen.add_argument("--name", default="execgate", help="file name stem (default: execgate)")

    verify = sub.add_parser(
        "verify",
        help="verify an audit log's signatures and chain (several files or a directory: "
        "a rotated log, checked as one chain; --postgres DSN: every log in the table)",
    )
    verify.add_argument("log", metavar="LOG", nargs="*")
    verify.add_argument(
        "--postgres",
        metavar="DSN",
        help="verify the logs shipped to this PostgreSQL database instead of files",
    )
    verify.add_argument("--log-id", metavar="ID", help="with --postgres: only the log with this id")
    verify.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PUB",
        help="a public key PEM file (repeatable)",
    )
    verify.add_argument("--keyring", metavar="DIR", help="a directory of *.pub / *.pem public keys")
    verify.add_argument(
        "--after",
        metavar="SHA256",
        help="verify a later part of a rotated log: its first record must continue from this "
        "digest (the 'last digest' verify printed for the files before it); without it the "
        "log must start at a genesis record",
    )

    log = sub.add_parser("log", help="inspect an audit log")
    log_sub = log.add_subparsers(dest="log_command", required=True, parser_class=_Parser)
    show = log_sub.add_parser("show", help="print the records of a log")
    show.add_argument("log", metavar="LOG")
    show.add_argument("--json", action="store_true", help="print each payload as JSON")

    run = sub.add_parser(
        "run",
        help="authorize a command, run it sandboxed, record both receipts",
        description="Exit status: the command's (128+N if killed by signal N), "
        "126 when denied, 125 when the sandbox cannot be set up, 2 on usage errors.",
    )
    run.add_argument("--policy", action="append", required=True, metavar="PATH")
    run.add_argument("--data", action="append", default=[], metavar="FILE")
    run.add_argument("--entrypoint", default="data.execgate.decision")
    run.add_argument("--key", metavar="PEM", help="private key signing the receipts")
    run.add_argument("--log", metavar="PATH", help="audit log for the receipts (needs --key)")
    run.add_argument("--action", default="shell.exec")
    run.add_argument("--principal", metavar="ID")
    run.add_argument("--role", action="append", default=[], metavar="ROLE")
    add_sandbox_flags(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")

    mcp = sub.add_parser(
        "mcp",
        help="gate every tool call of an MCP server (stdio, or Streamable HTTP with --listen)",
        description="Over stdio: execgate mcp --policy P [...] -- COMMAND ARGS... starts the MCP "
        "server COMMAND and relays MCP on this process's stdin/stdout, gating every tools/call. "
        "Over Streamable HTTP: execgate mcp --policy P --listen 127.0.0.1:PORT --tokens FILE "
        "--upstream URL relays a Streamable HTTP server, and execgate mcp --policy P --listen "
        "127.0.0.1:PORT --tokens FILE -- COMMAND ARGS... serves a stdio server, one child per "
        "HTTP session. Sandbox flags (or --sandbox) confine a server started from COMMAND. "
        "Exit status: the "
        "server's, 2 on usage errors, 125 when the sandbox cannot be set up.",
    )
    mcp.add_argument("--policy", action="append", required=True, metavar="PATH")
    mcp.add_argument("--data", action="append", default=[], metavar="FILE")
    mcp.add_argument("--entrypoint", default="data.execgate.decision")
    mcp.add_argument(
        "--visible",
        default="data.execgate.visible",
        metavar="RULE",
        help="the rule deciding which tools are listed, when the policy has it "
        "(default: data.execgate.visible)",
    )
    mcp.add_argument("--key", metavar="PEM", help="private key signing the receipts")
    mcp.add_argument("--log", metavar="PATH", help="audit log for the receipts (needs --key)")
    mcp.add_argument("--principal", metavar="ID", help="who the client acts for (stdio)")
    mcp.add_argument("--role", action="append", default=[], metavar="ROLE")
    mcp.add_argument(
        "--max-message",
        default="4M",
        metavar="SIZE",
        help="largest JSON-RPC message relayed, in either direction (default 4M)",
    )
    mcp.add_argument(
        "--approval-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long a call waits for the human's answer to an elicitation",
    )
    mcp.add_argument("--listen", metavar="HOST:PORT", help="serve Streamable HTTP here")
    mcp.add_argument("--upstream", metavar="URL", help="the Streamable HTTP MCP server to gate")
    mcp.add_argument(
        "--tokens",
        metavar="FILE",
        help='JSON {"<sha256 hex of a bearer token>": {"id": ..., "roles": [...]}} (HTTP)',
    )
    mcp.add_argument(
        "--max-sessions",
        type=int,
        default=16,
        metavar="N",
        help="HTTP with -- COMMAND: live sessions (children) at most (default 16)",
    )
    mcp.add_argument(
        "--session-idle",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="HTTP with -- COMMAND: end a session after this long without a request (default 600)",
    )
    mcp.add_argument(
        "--sandbox", action="store_true", help="confine the server even without other limits"
    )
    add_sandbox_flags(mcp)
    mcp.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")

    replay = sub.add_parser(
        "replay",
        help="re-evaluate a log's recorded inputs under a new policy",
        description="Needs a log written with Gate(..., record_input=True). Exit status: 0 when no "
        "decision changes between allow and deny, 1 when one does, 2 on errors.",
    )
    replay.add_argument("log", metavar="LOG")
    replay.add_argument("--policy", action="append", required=True, metavar="PATH")
    replay.add_argument("--data", action="append", default=[], metavar="FILE")
    replay.add_argument("--entrypoint", default="data.execgate.decision")

    bundle = sub.add_parser("bundle", help="OPA-format signed policy bundles")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True, parser_class=_Parser)
    build = bundle_sub.add_parser(
        "build",
        help="pack DIR's *.rego, data.json and data.yaml files into a signed .tar.gz bundle",
    )
    build.add_argument("directory", metavar="DIR")
    build.add_argument("--key", required=True, metavar="PRIV", help="Ed25519 private key PEM")
    build.add_argument("--out", required=True, metavar="FILE", help="the bundle to write")
    build.add_argument(
        "--revision", metavar="R", help="the manifest revision (default: a digest of the files)"
    )

    state = sub.add_parser("state", help="the shared state store (Redis) of a fleet")
    state_sub = state.add_subparsers(dest="state_command", required=True, parser_class=_Parser)
    rebuild = state_sub.add_parser(
        "rebuild",
        help="replace the store's rates, budgets and history with those the audit logs hold "
        "(after it lost its data; with no LOG, initialize a new store)",
    )
    rebuild.add_argument("log", metavar="LOG", nargs="*")
    rebuild.add_argument(
        "--state",
        required=True,
        metavar="URL",
        help="the gates' state= URL: redis://host:port/db, rediss://... (TLS; "
        "?ssl_certfile=&ssl_keyfile= for a client certificate, ssl_ca_certs= for a CA), "
        "redis+unix:///path, redis+cluster://host:port,host:port/",
    )
    rebuild.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PUB",
        help="a public key PEM file the logs must verify with (repeatable)",
    )
    rebuild.add_argument(
        "--keyring", metavar="DIR", help="a directory of *.pub / *.pem public keys"
    )
    rebuild.add_argument(
        "--history", type=int, default=32, metavar="N", help="entries kept per session (32)"
    )

    demo = sub.add_parser("demo", help="run a self-contained demonstration on the embedded policy")
    demo.add_argument(
        "--log",
        metavar="PATH",
        help="write the signed audit log here (default: a temporary directory)",
    )
    demo.add_argument(
        "--model",
        metavar="NAME",
        help="a real chat model for init_chat_model (needs execgate[langchain] and the "
        "provider's credentials); default: a scripted model, offline",
    )
    demo.add_argument(
        "--classic", action="store_true", help="the decorated-tools demo, without LangChain"
    )
    demo.add_argument(
        "--framework",
        choices=["langchain", "openai-agents", "pydantic-ai", "adk"],
        help="run a scripted agent of this framework (needs execgate[NAME]); "
        "the public key is written beside the log",
    )
    return parser


def _check(args: argparse.Namespace) -> int:
    from execgate.gate import Gate

    try:
        raw = (
            sys.stdin.read()
            if args.input == "-"
            else pathlib.Path(args.input).read_text(encoding="utf-8")
        )
    except OSError as e:
        print(f"execgate: cannot read input: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        print(f"execgate: input is not JSON: {e}", file=sys.stderr)
        return EXIT_ERROR
    action = doc.get("action") if isinstance(doc, dict) else None
    if not isinstance(action, dict) or not isinstance(action.get("name"), str):
        print(
            'execgate: input must be {"action": {"name": ..., "args": {...}}, '
            '"principal": {...}, "context": {...}}',
            file=sys.stderr,
        )
        return EXIT_ERROR
    gate = Gate(args.policy, data=args.data or None, entrypoint=args.entrypoint)
    context = dict(doc.get("context") or {})
    # The input file is the clock here: a recorded context.time is kept, so a
    # decision can be reproduced.
    time = context.pop("time", None)
    call = gate.pipeline.start(
        action["name"],
        action.get("args") or {},
        doc.get("principal") or {},
        context,
        query=True,
        time=time,
    )
    decision = gate.pipeline.authorize(call)
    out = decision.to_dict()
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return EXIT_OK if decision.allowed else EXIT_DENY


def _keygen(args: argparse.Namespace) -> int:
    import pathlib

    from execgate._core import SigningKey

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / f"{args.name}.key", out / f"{args.name}.pub"
    for path in (private, public):
        if path.exists():
            print(f"execgate: {path} exists; not overwriting a key", file=sys.stderr)
            return EXIT_ERROR
    key = SigningKey.generate()
    key.to_pem(private)
    key.verify_key.to_pem(public)
    print(f"wrote {private} (private, mode 0600) and {public}; kid {key.kid}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from execgate.verify import verify_log, verify_logs

    if not args.key and not args.keyring:
        print("execgate: give --key PUB or --keyring DIR", file=sys.stderr)
        return EXIT_ERROR
    if args.postgres is not None or args.log_id is not None:
        if args.log or args.postgres is None or args.after is not None:
            print(
                "execgate: give LOG files [--after D] or --postgres DSN [--log-id ID]",
                file=sys.stderr,
            )
            return EXIT_ERROR
        return _verify_postgres(args)
    if not args.log:
        print("execgate: give LOG files (or --postgres DSN)", file=sys.stderr)
        return EXIT_ERROR
    bar = _ProgressBar() if sys.stderr.isatty() else None
    try:
        if len(args.log) == 1 and not os.path.isdir(args.log[0]):
            report = verify_log(
                args.log[0], args.key, keyring=args.keyring, progress=bar, after=args.after
            )
        else:
            one = args.log[0] if len(args.log) == 1 else args.log
            report = verify_logs(
                one, args.key, keyring=args.keyring, progress=bar, after=args.after
            )
    finally:
        if bar is not None:
            bar.done()
    return _print_report(" ".join(args.log), report, "line")


def _verify_postgres(args: argparse.Namespace) -> int:
    from execgate.postgres import verify_postgres

    reports = verify_postgres(args.postgres, args.key, keyring=args.keyring, log_id=args.log_id)
    if not reports:
        print(f"{args.postgres}: no logs in the table; there is nothing to verify")
        return EXIT_DENY
    status = EXIT_OK
    for log_id, report in reports:
        if report.records == 0 and args.log_id is not None:
            print(f"log {log_id}: no rows in the table")
            status = EXIT_DENY
            continue
        if _print_report(f"log {log_id}", report, "seq") != EXIT_OK:
            status = EXIT_DENY
    return status


def _print_report(name: str, report: VerifyReport, unit: str) -> int:
    """Prints a verification report; its exit status. ``unit`` names what a
    report's line counts (file lines, or the seq of a table's rows)."""
    span = f"{report.first_ts} .. {report.last_ts}" if report.first_ts else "-"
    print(
        f"{name}: {report.records} records ({report.allowed} allowed, {report.denied} denied, "
        f"{report.completions} completions, {report.recoveries} recoveries, "
        f"{report.checkpoints} checkpoints)"
    )
    print(f"  time span : {span}")
    print(f"  keys seen : {', '.join(report.keys) or '-'}")
    if report.unfinished:
        print(
            f"  authorized but unfinished ({report.unfinished_count}): "
            + ", ".join(report.unfinished[:10])
            + (" ..." if report.unfinished_count > 10 else "")
        )
    if report.ok and report.records == 0:
        print("  EMPTY: the log holds no records; there is nothing to verify")
        return EXIT_DENY
    if report.ok:
        print(f"  last digest: {report.head}")
        print("  VALID: every signature, link and sequence number checks out")
        return EXIT_OK
    if report.incidents and report.line == report.incidents[0][0]:
        print(
            f"  NOT WHOLE: every record verifies, but writers recorded "
            f"{len(report.incidents)} incident(s):"
        )
        for line, reason in report.incidents[:10]:
            print(f"    {unit} {line}: {reason}")
        return EXIT_DENY
    print(f"  INVALID at {unit} {report.line}: {report.reason}")
    return EXIT_DENY


class _ProgressBar:
    """A one-line progress bar on stderr (used only when stderr is a terminal)."""

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        width = 30
        fraction = min(done / total, 1.0) if total else 1.0
        filled = int(fraction * width)
        sys.stderr.write(
            f"\r  verifying [{'#' * filled}{'.' * (width - filled)}] "
            f"{fraction:6.1%}  {done / 2**20:,.0f}/{total / 2**20:,.0f} MiB"
        )
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


EXIT_DENIED, EXIT_SANDBOX = 126, 125


def _run(args: argparse.Namespace) -> int:
    from execgate.errors import ActionDenied, SandboxError
    from execgate.gate import Gate

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        print("execgate: give the command after --", file=sys.stderr)
        return EXIT_ERROR
    if args.log and not args.key:
        print("execgate: --log needs --key", file=sys.stderr)
        return EXIT_ERROR
    try:
        box = sandbox_from_flags(args)
    except ValueError as e:
        print(f"execgate: {e}", file=sys.stderr)
        return EXIT_ERROR
    gate = Gate(
        args.policy,
        data=args.data or None,
        entrypoint=args.entrypoint,
        key=args.key,
        audit=args.log,
    )
    principal = {"id": args.principal, "roles": args.role} if args.principal else None
    try:
        done = gate.run(command, action=args.action, sandbox=box, principal=principal)
    except ActionDenied as e:
        print(f"execgate: denied: {'; '.join(e.reasons)}", file=sys.stderr)
        return EXIT_DENIED
    except SandboxError as e:
        print(f"execgate: {e}", file=sys.stderr)
        return EXIT_SANDBOX
    finally:
        gate.close()
    if done.limit_hit:
        print(f"execgate: limit hit: {done.limit_hit}", file=sys.stderr)
    if done.truncated:
        print("execgate: output past the cap was not kept in the record", file=sys.stderr)
    if done.signal is not None:
        return 128 + done.signal
    return done.exit_code if done.exit_code is not None else EXIT_SANDBOX


def _mcp(args: argparse.Namespace) -> int:
    from execgate.integrations.mcp.cli import main as mcp_main

    return mcp_main(args)


def _replay(args: argparse.Namespace) -> int:
    from execgate._core import Receipt
    from execgate.gate import Gate

    gate = Gate(args.policy, data=args.data or None, entrypoint=args.entrypoint)
    replayed = flipped = changed = 0
    with open(args.log, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            p = Receipt.from_json(line).payload
            if p.get("kind") != "decision" or "input" not in p:
                continue
            doc = p["input"]
            context = dict(doc.get("context") or {})
            # The recorded time: a decision is replayed as of when it was made.
            time = context.pop("time", None)
            call = gate.pipeline.start(
                doc["action"]["name"],
                doc["action"].get("args") or {},
                doc.get("principal") or {},
                context,
                query=True,
                time=time,
            )
            new = gate.pipeline.authorize(call)
            replayed += 1
            was = p["decision"] == "allow"
            if new.allowed != was:
                flipped += 1
                print(
                    f"line {number}: {doc['action']['name']} by {doc['principal'].get('id')}: "
                    f"{p['decision']} -> {'allow' if new.allowed else 'deny'}"
                    f"  (was: {'; '.join(p.get('reasons') or []) or '-'}; "
                    f"now: {'; '.join(new.reasons) or '-'})"
                )
            elif list(new.reasons) != list(p.get("reasons") or []):
                changed += 1
                print(
                    f"line {number}: {doc['action']['name']}: same verdict, reasons now "
                    f"{list(new.reasons)} (were {p.get('reasons')})"
                )
    if replayed == 0:
        print(
            "execgate: no recorded inputs in this log; write it with Gate(..., record_input=True)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    print(
        f"replayed {replayed} decisions under policy {gate.policy_digest[:16]}: "
        f"{flipped} would change between allow and deny, {changed} only in their reasons"
    )
    return EXIT_DENY if flipped else EXIT_OK


def _log_show(args: argparse.Namespace) -> int:
    from execgate._core import Receipt

    try:
        with open(args.log, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    payload = Receipt.from_json(raw.decode("utf-8")).payload
                except UnicodeDecodeError:
                    print(f"{number:>6}  <unreadable: not UTF-8 text; not an audit log line>")
                    continue
                except ExecgateError as e:
                    print(f"{number:>6}  <unreadable: {e}>")
                    continue
                if args.json:
                    print(json.dumps(payload, sort_keys=True))
                    continue
                print(_describe(number, payload))
            sys.stdout.flush()
    except BrokenPipeError:
        # `execgate log show LOG | head`: the reader has seen enough.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


def _describe(number: int, p: dict[str, Any]) -> str:
    head = f"{number:>6}  seq={p.get('seq')}  {p.get('ts')}  {p.get('kind', '?'):<10}"
    kind = p.get("kind")
    if kind == "decision":
        principal, action = p.get("principal"), p.get("action")
        who = principal.get("id") if isinstance(principal, dict) else None
        name = action.get("name") if isinstance(action, dict) else None
        reasons = "; ".join(str(r) for r in (p.get("reasons") or []))
        return (
            f"{head} {str(p.get('decision', '?')).upper():<5} {name} by {who}"
            + (f"  [{reasons}]" if reasons else "")
            + f"  id={p.get('id')}"
        )
    if kind == "completion":
        outcome, auth = p.get("outcome"), p.get("authorization")
        outcome = outcome if isinstance(outcome, dict) else {}
        auth_id = auth.get("id") if isinstance(auth, dict) else None
        duration = outcome.get("duration_ns")
        ms = f"{duration / 1e6:.3f} ms" if isinstance(duration, (int, float)) else "?"
        return f"{head} {outcome.get('status')} for {auth_id}  {ms}"
    if kind == "recovery":
        rec = p.get("recovered")
        rec = rec if isinstance(rec, dict) else {}
        if rec.get("cause", "torn_tail") == "torn_tail":
            return f"{head} moved {rec.get('bytes')} torn bytes to {rec.get('side_file')}"
        return f"{head} {rec.get('cause')}: {rec.get('reason')}"
    if kind == "checkpoint":
        return f"{head} seals the chain up to here"
    return head


def _demo(args: argparse.Namespace) -> int:
    from execgate import demo

    if args.framework and args.framework != "langchain":
        from execgate import demos

        try:
            run = demos.load(args.framework)
        except ImportError as e:
            extra = demos.FRAMEWORKS[args.framework][1]
            print(
                f"execgate: --framework {args.framework} needs {e.name or 'the framework'}: "
                f"pip install 'execgate[{extra}]'",
                file=sys.stderr,
            )
            return EXIT_ERROR
        return run(args.log)
    if args.framework == "langchain" and args.classic:
        print("execgate: --classic and --framework exclude each other", file=sys.stderr)
        return EXIT_ERROR
    if not args.classic:
        try:
            from execgate import agent_demo
        except ImportError:
            if args.model or args.framework:
                print(
                    "execgate: this demo needs LangChain: pip install 'execgate[langchain]'",
                    file=sys.stderr,
                )
                return EXIT_ERROR
        else:
            return agent_demo.run(args.log, args.model)
    return demo.run(args.log)


def _bundle_build(args: argparse.Namespace) -> int:
    from execgate._core import SigningKey, build_bundle

    key = SigningKey.from_pem(args.key)
    revision = build_bundle(args.directory, key, args.out, args.revision)
    print(f"{args.out}: revision {revision}, signed by {key.kid}")
    return EXIT_OK


def _state_rebuild(args: argparse.Namespace) -> int:
    from execgate._core import VerifyKey, rebuild_state

    if args.log and not args.key and not args.keyring:
        print("execgate: give --key PUB or --keyring DIR to verify the logs", file=sys.stderr)
        return EXIT_ERROR
    keys = [VerifyKey.from_pem(k) for k in args.key]
    done = rebuild_state(args.state, args.log, keys, keyring_dir=args.keyring, history=args.history)
    print(
        f"{done['state']}: rebuilt from {done['decisions']} decisions "
        f"({done['retries']} retries counted once): {done['budgets']} budgets, "
        f"{done['rates']} rate windows, {done['sessions']} sessions"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "log":
            return _log_show(args)
        if args.command == "run":
            return _run(args)
        if args.command == "mcp":
            return _mcp(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "bundle":
            return _bundle_build(args)
        if args.command == "state":
            return _state_rebuild(args)
    except ExecgateError as e:
        print(f"execgate: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, TypeError, ValueError) as e:
        print(f"execgate: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR
