"""The Gate: the Python face of the native policy engine."""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import hashlib
import os
import pathlib
import pickle
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, overload

from execgate import _core
from execgate._core import AuditLog, Decision, Receipt, SigningKey
from execgate.approval import ApprovalRequest, Approver, ask
from execgate.context import _context, _principal
from execgate.decorators import guard as _guard
from execgate.errors import ActionDenied, ApprovalRequired, ExecgateError, SandboxError
from execgate.sandbox import Completed, Sandbox

__all__ = ["DEFAULT_ENTRYPOINT", "Gate", "GuardDecorator", "PolicyLike"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_ENTRYPOINT = "data.execgate.decision"

PolicyLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
DataLike = (
    Mapping[str, Any]
    | str
    | os.PathLike[str]
    | Sequence[Mapping[str, Any] | str | os.PathLike[str]]
)


class _Outcome:
    """The completion record of one call, written when its ``with`` block ends."""

    __slots__ = ("gate", "receipt", "result", "start")

    def __init__(self, gate: Gate, receipt: Receipt | None) -> None:
        self.gate = gate
        self.receipt = receipt
        self.result: Any = None
        self.start = 0

    def __enter__(self) -> _Outcome:
        self.start = time.perf_counter_ns()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self.receipt is not None:
            self.gate._complete(self.receipt, self.start, None if exc else self.result, exc)


def _is_langchain_tool(obj: object) -> bool:
    """A LangChain BaseTool, recognized without importing LangChain."""
    return any(
        c.__name__ == "BaseTool" and c.__module__.startswith("langchain_core")
        for c in type(obj).__mro__
    )


class GuardDecorator(Protocol):
    """What ``gate.guard(action=...)`` returns: a decorator keeping the signature."""

    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


def _is_source(text: str) -> bool:
    """A str is Rego source (not a path) when it spans lines or starts with ``package``."""
    return "\n" in text or text.lstrip().startswith("package ")


def _policy_spec(policy: PolicyLike, data: DataLike | None) -> dict[str, list[Any]]:
    sources: list[tuple[str, str]] = []
    paths: list[str] = []
    items = [policy] if isinstance(policy, (str, os.PathLike)) else list(policy)
    for item in items:
        if isinstance(item, str) and _is_source(item):
            sources.append((f"<policy {len(sources)}>", item))
        elif isinstance(item, (str, os.PathLike)):
            paths.append(os.fspath(item))
        else:
            raise TypeError(f"policy must be Rego source or a path, not {type(item).__name__}")
    data_dicts: list[dict[str, Any]] = []
    data_files: list[str] = []
    if data is not None:
        data_items = [data] if isinstance(data, (Mapping, str, os.PathLike)) else list(data)
        for d in data_items:
            if isinstance(d, Mapping):
                data_dicts.append(dict(d))
            elif isinstance(d, (str, os.PathLike)):
                data_files.append(os.fspath(d))
            else:
                raise TypeError(f"data must be a dict or a path, not {type(d).__name__}")
    return {"sources": sources, "paths": paths, "data": data_dicts, "data_files": data_files}


# Logs opened through a Gate are closed at interpreter exit, so checkpoint-mode
# records get their final checkpoint and batch-mode records their fsync.
_open_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


@atexit.register
def _close_open_logs() -> None:
    for log in list(_open_logs):
        try:
            log.close()
        except Exception:  # nothing is left to report to at exit
            pass


def _audit_log(
    key: SigningKey | str | os.PathLike[str] | None,
    audit: str | os.PathLike[str] | AuditLog | None,
) -> AuditLog | None:
    if isinstance(audit, AuditLog):
        if key is not None:
            raise TypeError("pass the key to AuditLog(...) or to Gate(key=...), not both")
        return audit
    if key is None:
        if audit is not None:
            raise TypeError("an audit log needs a signing key: Gate(..., key=...)")
        return None
    signing_key = key if isinstance(key, SigningKey) else SigningKey.from_pem(os.fspath(key))
    log = AuditLog(os.fspath(audit) if audit is not None else None, signing_key)
    _open_logs.add(log)
    return log


def _rfc3339(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("the gate clock returned a naive datetime; it must be time-zone aware")
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Gate:
    """Evaluates actions against Rego policies, natively.

    ``policy`` is Rego source, a ``.rego`` file, a directory of them (searched
    recursively, ``*_test.rego`` skipped), or a list of any of these. ``data``
    is a dict, a JSON/YAML file, or a list of them, merged into ``data``.
    ``mode="audit"`` never blocks: decisions still say what the policy decided.
    ``max_instructions``, ``timeout`` (seconds) and ``max_memory`` (bytes of
    builtin output, 64 MiB by default) bound each evaluation; exceeding any of
    them, or a result arriving after the timeout, denies with ``error="limit"``.
    ``clock`` replaces the system clock for ``context.time`` (a callable
    returning an aware datetime).

    With ``key`` (a SigningKey or a PKCS#8 PEM path) every decision carries a
    signed ``receipt``; with ``audit`` (a path, or an :class:`AuditLog` for
    durability and signing options) receipts are appended to that log. A
    decision that cannot be recorded is a deny. ``record_input=True`` puts the
    whole input document, arguments included, in each decision record, so
    ``execgate replay`` can re-evaluate the log under a new policy; it is off
    by default because secrets passed as arguments would then be in the log.

    A policy can require human approval (``obligations.approval`` with a
    ``reason`` and ``approvers``): ``approver`` is asked (see
    :mod:`execgate.approval`); without one the call raises
    :class:`ApprovalRequired`; no answer within ``approval_timeout`` seconds
    denies.

    ``history`` is how many past decisions per session (``context.session``)
    policies see as ``input.history`` (0, the default, leaves ``input.history``
    and ``input.usage`` out: they cost about 2 us a check); ``input.usage``
    has the session's call count and the budgets spent. ``rate`` and
    ``budget`` obligations are enforced atomically, and rebuilt from the audit
    log when the gate opens it.
    """

    def __init__(
        self,
        policy: PolicyLike,
        *,
        data: DataLike | None = None,
        entrypoint: str = DEFAULT_ENTRYPOINT,
        mode: Literal["enforce", "audit"] = "enforce",
        max_instructions: int = 1_000_000,
        timeout: float = 0.1,
        max_memory: int = 64 << 20,
        clock: Callable[[], dt.datetime] | None = None,
        key: SigningKey | str | os.PathLike[str] | None = None,
        audit: str | os.PathLike[str] | AuditLog | None = None,
        record_input: bool = False,
        history: int = 0,
        approver: Approver | None = None,
        approval_timeout: float = 300.0,
    ) -> None:
        self._log = _audit_log(key, audit)
        self._native = _core.Gate(
            **_policy_spec(policy, data),
            entrypoint=entrypoint,
            mode=mode,
            max_instructions=max_instructions,
            timeout=timeout,
            max_memory=max_memory,
            log=self._log,
            record_input=record_input,
            history=history,
        )
        self._clock = clock
        self._approver = approver
        self._approval_timeout = approval_timeout

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], **options: Any) -> Gate:
        """A gate over the policy file or directory at ``path``."""
        return cls(pathlib.Path(path), **options)

    # -- evaluation ---------------------------------------------------------

    def check(
        self,
        action: str,
        args: Mapping[str, Any] | None = None,
        *,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Evaluates ``action`` with ``args``. Never raises for a deny."""
        if args is not None and type(args) is not dict:
            args = dict(args)
        return self._decide(action, args, principal, context)

    def enforce(
        self,
        action: str,
        args: Mapping[str, Any] | None = None,
        *,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Like :meth:`check`, but raises :class:`ActionDenied` when the call is blocked."""
        if args is not None and type(args) is not dict:
            args = dict(args)
        return self._authorize(action, args or {}, principal, context)

    def _decide(
        self,
        action: str,
        args: dict[str, Any] | None,
        principal: Mapping[str, Any] | None,
        context: Mapping[str, Any] | None,
    ) -> Decision:
        """The one path to the native check: ambient values, explicit overrides, clock."""
        p = _principal.get()
        if principal:
            p = {**p, **principal}
        c = _context.get()
        if context:
            c = {**c, **context}
        now = _rfc3339(self._clock()) if self._clock is not None else None
        return self._native.check(action, args, p, c, now)

    def _authorize(
        self,
        action: str,
        args: dict[str, Any],
        principal: Mapping[str, Any] | None,
        context: Mapping[str, Any] | None,
    ) -> Decision:
        """Decide; raise ActionDenied when blocked; obtain approval when required."""
        decision = self._decide(action, args, principal, context)
        if decision.blocked:
            raise ActionDenied(decision)
        if decision.allowed and "approval" in decision.obligations:
            self._approve(decision)
        return decision

    def _approve(self, decision: Decision) -> None:
        request = ApprovalRequest.of(decision)
        if self._approver is None:
            raise ApprovalRequired(request)
        answer = ask(self._approver, request, self._approval_timeout)
        approved = answer is not None and answer.approved
        if decision.receipt is not None:
            self._native.record_approval(
                decision.receipt,
                approved=approved,
                approver="" if answer is None else answer.approver,
                comment=None if answer is None else answer.comment,
                timed_out=answer is None,
            )
        if not approved:
            why = (
                f"approval timed out after {self._approval_timeout:g} s"
                if answer is None
                else f"approval refused by {answer.approver}"
                + (f": {answer.comment}" if answer.comment else "")
            )
            raise ActionDenied(decision, (why,))

    @staticmethod
    def _redaction(decision: Decision, where: str) -> Mapping[str, Any] | None:
        """``obligations.redact[where]`` (``args`` or ``output``), or None."""
        spec = (decision.obligations.get("redact") or {}).get(where)
        if not spec:
            return None
        return spec if isinstance(spec, Mapping) else {}

    def _apply_redaction(
        self, decision: Decision, spec: Mapping[str, Any], value: Any, path: str
    ) -> Any:
        """Runs the privacy router on ``value``; a ``deny`` that finds something refuses."""
        try:
            out, _ = self._native.redact(
                value,
                transform=spec.get("transform", "mask"),
                detectors=spec.get("detectors"),
                path=path,
            )
        except ExecgateError as e:
            raise ActionDenied(decision, (f"redaction refused the call: {e}",)) from None
        return out

    def _redact_output(self, decision: Decision, value: Any) -> Any:
        """The output after ``obligations.redact.output`` (unchanged without it)."""
        spec = self._redaction(decision, "output")
        return value if spec is None else self._apply_redaction(decision, spec, value, "output")

    def _redact_args(self, decision: Decision, args: dict[str, Any]) -> dict[str, Any]:
        """The arguments a tool receives: those named in ``obligations.redact.args.paths``
        (all, when none are named) rewritten by the privacy router."""
        spec = self._redaction(decision, "args")
        if spec is None:
            return args
        names = spec.get("paths")
        return {
            k: (self._apply_redaction(decision, spec, v, k) if names is None or k in names else v)
            for k, v in args.items()
        }

    def _recording(self, receipt: Receipt | None) -> _Outcome:
        """Used by ``@guard``: ``with gate._recording(receipt) as call: call.result = ...``
        times the call and, with a receipt, records its completion (result or exception)."""
        return _Outcome(self, receipt)

    def _complete(
        self, receipt: Receipt, start_ns: int, output: Any, error: BaseException | None
    ) -> Receipt:
        """Used by ``@guard``: the completion record of a call that ran."""
        return self._native.record_outcome(
            receipt,
            status="ok" if error is None else "error",
            duration_ns=time.perf_counter_ns() - start_ns,
            output=output,
            error_type=None if error is None else type(error).__qualname__,
        )

    # -- decorators ---------------------------------------------------------

    @overload
    def guard(self, fn: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def guard(
        self,
        *,
        action: str | None = None,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        isolate: Sandbox | None = None,
    ) -> GuardDecorator: ...

    def guard(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        action: str | None = None,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        isolate: Sandbox | None = None,
    ) -> Any:
        """Decorator: authorize every call of the function before its body runs.

        ``@gate.guard`` uses the function's qualified name as the action;
        ``@gate.guard(action="fs.read", principal=..., context=...)`` sets it
        and fixed principal/context values (which override ambient ones).
        ``isolate=Sandbox(...)`` runs the body in a sandboxed child process
        (module-level sync functions; arguments and result are pickled).
        """

        def decorate(f: Callable[..., Any], /) -> Callable[..., Any]:
            if _is_langchain_tool(f):  # @gate.guard over @tool
                from execgate.integrations.langchain import guard_tool

                return guard_tool(f, self, action=action)  # type: ignore[arg-type,return-value]
            return _guard(
                self, f, action=action, principal=principal, context=context, isolate=isolate
            )

        return decorate(fn) if fn is not None else decorate

    # -- sandboxed execution ---------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        action: str = "shell.exec",
        sandbox: Sandbox | None = None,
        stdin: bytes | str | None = None,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Completed:
        """Authorizes ``argv``, runs it sandboxed, and records the outcome.

        The policy sees ``input.action.args = {"argv": [...], "sandbox": {...}}``
        and may tighten the sandbox with ``obligations.sandbox``. A denied run
        never starts (:class:`ActionDenied`). With receipts, the completion
        record carries exit status, limit hit, usage, output digests, the
        protections in force and the effective sandbox.
        """
        box = sandbox if sandbox is not None else Sandbox()
        argv = [os.fspath(a) for a in argv]
        decision = self._authorize(
            action, {"argv": argv, "sandbox": box.request()}, principal, context
        )
        return self._sandboxed(argv, box, stdin, decision)

    def _sandboxed(
        self, argv: list[str], box: Sandbox, stdin: bytes | str | None, decision: Decision
    ) -> Completed:
        """Runs an authorized command and records its completion (one place for both)."""
        receipt = decision.receipt
        start = time.perf_counter_ns()
        try:
            done = box.run(argv, stdin=stdin, obligation=decision.obligations.get("sandbox"))
        except BaseException as e:
            if receipt is not None:
                self._complete(receipt, start, None, e)
            raise
        if receipt is not None:
            failure = done.limit_hit or (
                f"signal {done.signal}" if done.signal is not None else f"exit {done.exit_code}"
            )
            self._native.record_outcome(
                receipt,
                status="ok" if done.ok else "error",
                duration_ns=time.perf_counter_ns() - start,
                error_type=None if done.ok else failure,
                extra={
                    "exit_code": done.exit_code,
                    "signal": done.signal,
                    "limit_hit": done.limit_hit,
                    "truncated": done.truncated,
                    "usage": dict(done.usage),
                    "stdout_sha256": hashlib.sha256(done.stdout).hexdigest(),
                    "stderr_sha256": hashlib.sha256(done.stderr).hexdigest(),
                    "protections": dict(done.protections),
                    "sandbox": dict(done.sandbox),
                },
            )
        return done

    def _run_isolated(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        box: Sandbox,
        decision: Decision,
    ) -> Any:
        """Used by ``@guard(isolate=...)``: the body runs in a sandboxed child."""
        # The child must import the function: it gets this interpreter, this
        # sys.path (readable, and as PYTHONPATH), and nothing else.
        paths = [p for p in {os.path.realpath(p) for p in sys.path if p} if os.path.exists(p)]
        paths += [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)]
        env = {**(box.env or {}), "PYTHONPATH": os.pathsep.join(paths)}
        child_box = dataclasses.replace(box, read=[*box.read, *paths], env=env)
        request = pickle.dumps((fn.__module__, fn.__qualname__, args, kwargs))
        argv = [os.path.realpath(sys.executable), "-m", "execgate._isolate"]
        done = self._sandboxed(argv, child_box, request, decision)
        if done.limit_hit is not None or done.exit_code != 0:
            raise SandboxError(
                f"isolated {fn.__qualname__} did not finish: "
                + (
                    f"limit {done.limit_hit} hit"
                    if done.limit_hit
                    else f"exit {done.exit_code}, signal {done.signal}"
                )
                + (f"\n{done.stderr.decode(errors='replace')[-2000:]}" if done.stderr else ""),
                completed=done,
            )
        status, value = pickle.loads(done.stdout)
        if status == "ok":
            return value
        if status == "error":
            raise value
        raise SandboxError(f"isolated {fn.__qualname__}: {value}", completed=done)

    async def arun(self, argv: Sequence[str], **options: Any) -> Completed:
        """:meth:`run` without blocking the event loop."""
        import asyncio  # imported here: it costs ~10 ms at import time

        return await asyncio.to_thread(self.run, argv, **options)

    # -- policy management --------------------------------------------------

    def reload(self, policy: PolicyLike | None = None, *, data: DataLike | None = None) -> str:
        """Recompiles and swaps the policy atomically; returns the new digest.

        With no arguments the current files are read again. Checks already
        running finish on the old policy; if the new one fails to load,
        :class:`PolicyError` is raised and the old policy stays in force.
        """
        if policy is None and data is None:
            return self._native.reload()
        if policy is None:
            raise TypeError("reload(data=...) needs the policy too")
        return self._native.reload(**_policy_spec(policy, data))

    @property
    def policy_digest(self) -> str:
        """SHA-256 of the policy modules, data and entry point now in force."""
        return self._native.policy_digest

    @property
    def entrypoint(self) -> str:
        return self._native.entrypoint

    @property
    def mode(self) -> str:
        return self._native.mode

    @property
    def max_instructions(self) -> int:
        return self._native.max_instructions

    @property
    def max_memory(self) -> int:
        """The evaluation memory budget in bytes."""
        return self._native.max_memory

    @property
    def timeout(self) -> float:
        return self._native.timeout

    # -- receipts ------------------------------------------------------------

    def record_outcome(
        self,
        receipt: Receipt,
        *,
        status: Literal["ok", "error"] = "ok",
        output: Any = None,
        error: BaseException | str | None = None,
        duration: float | None = None,
    ) -> Receipt:
        """Appends a signed completion record linked to ``receipt``.

        ``output`` is digested, never stored; ``error`` (an exception or a type
        name) is recorded by type; ``duration`` is in seconds.
        """
        error_type = None
        if error is not None:
            status = "error"
            error_type = error if isinstance(error, str) else type(error).__qualname__
        return self._native.record_outcome(
            receipt,
            status=status,
            duration_ns=int((duration or 0.0) * 1e9),
            output=output,
            error_type=error_type,
        )

    @property
    def log(self) -> AuditLog | None:
        """The audit log (or in-memory chain) receipts go to, if any."""
        return self._log

    def close(self) -> None:
        """Flushes and closes the audit log (sealing checkpoints). Safe to call twice."""
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Gate mode={self.mode} entrypoint={self.entrypoint} policy={self.policy_digest[:12]}>"
        )
