"""The ``execgate`` command line.

Exit codes: 0 success / allow, 1 deny, 2 usage or load error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from execgate import __version__
from execgate.errors import ExecgateError

__all__ = ["main"]

EXIT_OK, EXIT_DENY, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors too
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


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

    sub.add_parser("demo", help="run a self-contained demonstration on the embedded policy")
    return parser


def _check(args: argparse.Namespace) -> int:
    from execgate.gate import Gate

    try:
        raw = sys.stdin.read() if args.input == "-" else open(args.input, encoding="utf-8").read()
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
    decision = gate._native.check(
        action["name"], action.get("args") or {}, doc.get("principal") or {}, context, time
    )
    out = decision.to_dict()
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return EXIT_OK if decision.allowed else EXIT_DENY


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "demo":
            from execgate.demo import run

            return run()
    except ExecgateError as e:
        print(f"execgate: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (TypeError, ValueError) as e:
        print(f"execgate: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR
