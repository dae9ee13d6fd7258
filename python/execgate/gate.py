"""The Gate: the Python face of the native policy engine."""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import hashlib
import os
import pathlib
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, overload

from execgate import _core
from execgate._core import (
    AuditLog,
    Bundle,
    BundleKey,
    Capabilities,
    Decision,
    Receipt,
    SigningKey,
    VerifyKey,
)
from execgate.approval import Approver
from execgate.bundle_source import BundleSource, Poller, deny_all_policy, is_url
from execgate.bundle_source import log as bundle_log
from execgate.decorators import guard as _guard
from execgate.errors import ActionDenied, ConfigurationError, SandboxError
from execgate.pipeline import Pipeline, Run, raise_if_blocked
from execgate.sandbox import Completed, Sandbox

if TYPE_CHECKING:
    from execgate.postgres import Shipper, ShippingStatus

__all__ = ["DEFAULT_ENTRYPOINT", "Gate", "GuardDecorator", "PolicyLike"]

#: What ``Gate.run`` can do with a command: sandbox it, and replace its ``argv``.
_COMMAND = Capabilities(sandbox=True, replaceable=["argv"])

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


class GuardDecorator(Protocol):
    """What ``gate.guard(action=...)`` returns: a decorator keeping the signature."""

    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


def _is_source(text: str) -> bool:
    """A str is Rego source (not a path) when it spans lines or starts with ``package``."""
    return "\n" in text or text.lstrip().startswith("package ")


def _policy_spec(policy: PolicyLike, data: DataLike | None) -> dict[str, Any]:
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


# Logs a Gate writes to are closed at interpreter exit, so queued completion
# records are written, checkpoint-mode records get their final checkpoint and
# batch-mode records their fsync.
_open_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


@atexit.register
def _close_open_logs() -> None:
    for log in list(_open_logs):
        try:
            log.close()
        except Exception as e:  # exit goes on; say what could not be sealed
            print(f"execgate: could not close an audit log at exit: {e}", file=sys.stderr)
    # Then the shippers copy the logs' last records (checkpoints) and stop.
    shipping = sys.modules.get("execgate.postgres")
    if shipping is not None:
        shipping.stop_all()


def _in_forked_child() -> None:
    # A multiprocessing worker ends with os._exit, past atexit, and its
    # start-up drops the finalizers it inherited: have that start-up register
    # one that closes the logs at the worker's exit.
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.register_after_fork(
            _close_open_logs,
            lambda _: util.Finalize(None, _close_open_logs, exitpriority=0),
        )


os.register_at_fork(after_in_child=_in_forked_child)


def _mapping(args: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return args if args is None or type(args) is dict else dict(args)


def _audit_log(
    key: SigningKey | str | os.PathLike[str] | None,
    audit: str | os.PathLike[str] | AuditLog | None,
) -> AuditLog | None:
    if isinstance(audit, AuditLog):
        if key is not None:
            raise TypeError("pass the key to AuditLog(...) or to Gate(key=...), not both")
        _open_logs.add(audit)
        return audit
    if key is None:
        if audit is not None:
            raise TypeError("an audit log needs a signing key: Gate(..., key=...)")
        return None
    signing_key = key if isinstance(key, SigningKey) else SigningKey.from_pem(os.fspath(key))
    log = AuditLog(os.fspath(audit) if audit is not None else None, signing_key)
    _open_logs.add(log)
    return log


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
    :mod:`execgate.approval`); without one the call is denied as pending
    approval (guarded calls raise :class:`ApprovalRequired`); no answer within
    ``approval_timeout`` seconds denies.

    When the policy reads ``input.history`` or ``input.usage``, the gate keeps
    the last ``history`` decisions per session (``context.session``, default
    32) for it; a policy that reads neither costs nothing. ``rate`` and
    ``budget`` obligations are enforced atomically, and rebuilt from the audit
    log when the gate opens it.

    ``bundle`` (a path to an OPA-format ``.tar.gz``) with ``bundle_key`` (a
    :class:`VerifyKey`, a :class:`BundleKey`, or a public key PEM path: an
    execgate Ed25519 key verifies EdDSA bundles, an RSA key RS256 and a P-256
    key ES256, OPA's own signatures) loads the policy and data from
    a signed bundle instead of ``policy``/``data``: its signature, exact file
    list and every file hash must verify, or the gate is not built
    (:class:`SignatureError` / :class:`PolicyError`). ``reload()`` reads the
    bundle file again; a bundle that fails to verify or compile leaves the old
    policy in force. Receipts record the bundle's revision in
    ``policy.revision``.

    ``ship_to`` (a PostgreSQL connection string, with ``audit=PATH``) copies
    every record of the local log, which stays the first durable copy, into
    the append-only table ``execgate_audit`` on a background thread (see
    :mod:`execgate.postgres`; needs ``execgate[postgres]``): decisions never
    wait for it; :attr:`shipping` shows the lag and the last error; an
    outage is retried with backoff and shipping resumes where the server
    stands, with no record lost or inserted twice.

    ``bundle`` may be an ``http(s)://`` URL: it is downloaded (``If-None-Match``
    with the last ETag), verified, and the last good one kept at
    ``bundle_cache`` (a file path) for restarts without the server. A gate
    that cannot get a valid bundle, from the server or the cache, denies every
    call with a reason saying so. ``bundle_poll=SECONDS`` fetches again on a
    background thread (with jitter, backing off while it fails) and swaps a
    new revision in through :meth:`reload`; a bundle that fails is logged
    (logger ``execgate.bundle``) and the old policy stays.

    ``bundle_max_age=SECONDS`` makes a stale policy deny: when the bundle in
    force was last confirmed current longer ago than that, every decision is
    a deny with ``error="stale"`` and a reason naming the bundle. A bundle is
    confirmed current when it is installed (built, or ``reload()``) and, for
    a URL, whenever the server answers 304 to a poll; a failed fetch confirms
    nothing. A bundle restored from ``bundle_cache`` is as old as the cache's
    last confirmation. With a URL, ``bundle_max_age`` must exceed
    ``bundle_poll``.

    ``state`` (``"redis://host:port/db"``, ``"rediss://..."`` (TLS, verified
    against the system's CA roots or the URL's ``ssl_ca_certs=PATH``; a
    client certificate with ``ssl_certfile=PATH&ssl_keyfile=PATH``),
    ``"redis+unix:///path"``, ``"unix:///path"``, or a Redis Cluster's seed
    nodes: ``"redis+cluster://host:port,host:port/"`` (``rediss+cluster://``
    with TLS)) keeps rates, budgets and history in that Redis,
    shared by every gate pointed at it: one script checks and takes all of a
    decision's limits on Redis's clock, and a retried call (same
    ``tool_call_id``, session, principal, action and arguments) does not take
    twice. It needs ``key`` (limit keys are the pseudonyms the log records).
    When the store cannot be reached, answers later than ``state_timeout``
    seconds (connecting: ``state_connect_timeout``), or lost its data, calls
    that take limits or whose policy reads history are denied with
    ``error="state"``; other calls are unaffected. A new or emptied store is
    initialized from the audit trail with ``execgate state rebuild``.

    Every entry point drives the same call pipeline, :attr:`pipeline` (see
    :mod:`execgate.pipeline` and the README's "Call pipeline").
    """

    def __init__(
        self,
        policy: PolicyLike | None = None,
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
        history: int | None = None,
        approver: Approver | None = None,
        approval_timeout: float = 300.0,
        bundle: str | os.PathLike[str] | None = None,
        bundle_key: VerifyKey | BundleKey | str | os.PathLike[str] | None = None,
        bundle_poll: float | None = None,
        bundle_cache: str | os.PathLike[str] | None = None,
        bundle_max_age: float | None = None,
        state: str | None = None,
        state_timeout: float = 0.25,
        state_connect_timeout: float = 1.0,
        ship_to: str | None = None,
    ) -> None:
        self._bundle: tuple[str, VerifyKey | BundleKey] | None = None
        self._source: BundleSource | None = None
        self._poller: Poller | None = None
        spec: dict[str, Any]
        age: float | None = None  # how long ago the bundle in force was confirmed current
        if bundle is not None:
            if policy is not None or data is not None:
                raise TypeError("pass either policy/data or bundle, not both")
            if bundle_key is None:
                raise TypeError("a bundle needs its public key: Gate(bundle=..., bundle_key=...)")
            verify_key = (
                bundle_key
                if isinstance(bundle_key, (VerifyKey, BundleKey))
                else BundleKey.from_pem(os.fspath(bundle_key))
            )
            if is_url(bundle):
                self._source = BundleSource(os.fspath(bundle), verify_key, cache=bundle_cache)
                spec, age = self._first_bundle(entrypoint)
            else:
                self._bundle = (os.fspath(bundle), verify_key)
                spec, age = {"bundle": Bundle.read(self._bundle[0], verify_key)}, 0.0
            if bundle_max_age is not None and bundle_poll is not None:
                if bundle_max_age <= bundle_poll:
                    raise ConfigurationError(
                        f"bundle_max_age ({bundle_max_age:g} s) must exceed bundle_poll "
                        f"({bundle_poll:g} s), or the policy goes stale between polls"
                    )
        elif bundle_max_age is not None:
            raise TypeError("bundle_max_age needs bundle=...")
        elif policy is None:
            raise TypeError("Gate needs a policy (or bundle=... with bundle_key=...)")
        else:
            spec = _policy_spec(policy, data)
        self._log = _audit_log(key, audit)
        native = _core.Gate(
            **spec,
            entrypoint=entrypoint,
            mode=mode,
            max_instructions=max_instructions,
            timeout=timeout,
            max_memory=max_memory,
            log=self._log,
            record_input=record_input,
            history=history,
            state=state,
            state_timeout=state_timeout,
            state_connect_timeout=state_connect_timeout,
            bundle_max_age=bundle_max_age,
            bundle_name=os.fspath(bundle) if bundle is not None else "",
        )
        if age is not None:
            native.confirm_bundle(age)
        self._native = native
        #: The call pipeline every entry point drives.
        self.pipeline = Pipeline(
            native, clock=clock, approver=approver, approval_timeout=approval_timeout
        )
        self._shipper = self._start_shipping(ship_to)
        if self._source is not None:
            self._source.installed()
            if bundle_poll is not None:
                self._poller = Poller(self._update_from_source, bundle_poll)
        elif bundle_poll is not None:
            raise TypeError("bundle_poll needs bundle=URL")

    def _start_shipping(self, ship_to: str | None) -> Shipper | None:
        if ship_to is None:
            return None
        path = self._log.path if self._log is not None else None
        if self._log is None or path is None:
            raise TypeError(
                "ship_to needs a local audit log: Gate(key=..., audit=PATH, ship_to=...)"
            )
        from execgate.postgres import Shipper

        return Shipper(path, ship_to, head=self._log)

    def _first_bundle(self, entrypoint: str) -> tuple[dict[str, Any], float | None]:
        """The policy to start with and how long ago it was confirmed current
        (None: no bundle, a deny-all placeholder)."""
        source = self._source
        assert source is not None  # noqa: S101  (only called with a source)
        error: Exception | None = None
        try:
            fetched = source.fetch()
            if fetched is not None:
                return {"bundle": fetched}, 0.0
        except Exception as e:  # the server is down or serves a bad bundle: try the cache
            error = e
        cached = source.cached()
        if cached is not None:
            if error is not None:
                bundle_log.warning("execgate: %s: %s; using the cached bundle", source.url, error)
            return {"bundle": cached[0]}, cached[1]
        reason = f"no valid policy bundle from {source.url}: {error}"
        bundle_log.warning("execgate: %s", reason)
        return {"sources": [("<no bundle>", deny_all_policy(entrypoint, reason))]}, None

    def _update_from_source(self) -> str:
        source = self._source
        assert source is not None  # noqa: S101  (only called with a source)
        bundle = source.fetch()
        if bundle is None:  # 304: the bundle in force is still the server's
            source.confirmed()
            digest = self.policy_digest
        else:
            digest = self._native.reload(bundle=bundle)
            source.installed()
        self._native.confirm_bundle()
        return digest

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
        """Decides ``action`` with ``args``: ``allowed`` means the call may run
        now. Never raises for a deny.

        The configured approver is asked when the policy requires approval
        (without one the decision is a deny pending approval), and rate and
        budget obligations are taken. Obligations ``check`` cannot fulfil
        itself stay on the decision: a caller that acts on it must apply
        ``obligations.sandbox``, ``redact`` and ``args`` (or use ``guard``,
        ``run`` or an integration, which do).
        """
        return self.pipeline.check(action, _mapping(args), principal, context)

    def enforce(
        self,
        action: str,
        args: Mapping[str, Any] | None = None,
        *,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Like :meth:`check`, but raises :class:`ActionDenied` (or
        :class:`ApprovalRequired`) when the call is blocked."""
        _, decision = self.pipeline.decide(action, _mapping(args), principal, context, query=True)
        raise_if_blocked(decision)
        return decision

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
        (module-level sync functions; arguments and result cross as JSON, see
        :mod:`execgate.isolate`).
        """

        def decorate(f: Callable[..., Any], /) -> Callable[..., Any]:
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
        and may tighten the sandbox with ``obligations.sandbox``; an ``args``
        rewrite may replace ``argv``. A denied run never starts
        (:class:`ActionDenied`). With receipts, the completion record carries
        exit status, limit hit, usage, output digests, the protections in force
        and the effective sandbox. ``obligations.redact.output`` applies to
        stdout and stderr.
        """
        box = sandbox if sandbox is not None else Sandbox()
        call, decision = self.pipeline.decide(
            action,
            {"argv": [os.fspath(a) for a in argv], "sandbox": box.request()},
            principal,
            context,
            capabilities=_COMMAND,
        )
        raise_if_blocked(decision)
        argv = call.arguments()["argv"]
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            with Run(call, decision) as run:  # the authorized call ends, recorded as refused
                run.error = "obligations.args.argv is not a list of strings"
            raise ActionDenied(decision, (run.error,))
        run, done = run_sandboxed(call, decision, argv, box, stdin, pipeline=self.pipeline)
        if not run.call.redacts_output:
            return done
        return dataclasses.replace(
            done, stdout=run.output(done.stdout), stderr=run.output(done.stderr)
        )

    async def arun(self, argv: Sequence[str], **options: Any) -> Completed:
        """:meth:`run` without blocking the event loop."""
        import asyncio  # imported here: it costs ~10 ms at import time

        return await asyncio.to_thread(self.run, argv, **options)

    # -- policy management --------------------------------------------------

    def reload(self, policy: PolicyLike | None = None, *, data: DataLike | None = None) -> str:
        """Recompiles and swaps the policy atomically; returns the new digest.

        With no arguments the current files are read again (for a gate built
        from a bundle: the bundle file, verified again). Checks already
        running finish on the old policy; if the new one fails to load or
        verify, :class:`PolicyError` (or :class:`SignatureError`) is raised
        and the old policy stays in force.
        """
        if policy is None and data is None:
            if self._source is not None:
                return self._update_from_source()
            if self._bundle is not None:
                path, key = self._bundle
                digest = self._native.reload(bundle=Bundle.read(path, key))
                self._native.confirm_bundle()
                return digest
            return self._native.reload()
        if policy is None:
            raise TypeError("reload(data=...) needs the policy too")
        return self._native.reload(**_policy_spec(policy, data))

    @property
    def policy_digest(self) -> str:
        """SHA-256 of the policy modules, data and entry point now in force."""
        return self._native.policy_digest

    @property
    def policy_revision(self) -> str | None:
        """The revision of the bundle now in force (None without a bundle)."""
        return self._native.policy_revision

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

    @property
    def shipping(self) -> ShippingStatus | None:
        """Where shipping to PostgreSQL (``ship_to``) stands: the last seq
        shipped, the lag, the last error (None without ``ship_to``)."""
        return self._shipper.status if self._shipper is not None else None

    def flush(self) -> None:
        """Waits until the completion records of the calls that returned are
        written to the audit log (a guarded call returns before its completion
        record is written unless the log's durability is ``"always"``).
        Raises AuditLogError when one could not be written."""
        if self._log is not None:
            self._log.flush()

    def close(self) -> None:
        """Stops bundle polling; flushes and closes the audit log (sealing
        checkpoints); ships its last records (while PostgreSQL answers, a few
        seconds at most) and stops the shipper. Safe to call twice."""
        if self._poller is not None:
            self._poller.stop()
        if self._log is not None:
            self._log.close()
        if self._shipper is not None:
            self._shipper.stop()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Gate mode={self.mode} entrypoint={self.entrypoint} policy={self.policy_digest[:12]}>"
        )


def run_sandboxed(
    call: _core.Call,
    decision: Decision,
    argv: list[str],
    box: Sandbox,
    stdin: bytes | str | None,
    *,
    pipeline: Pipeline | None = None,
) -> tuple[Run, Completed]:
    """Runs an authorized command under its sandbox (tightened by
    ``obligations.sandbox``) and records its completion: ``gate.run`` and
    ``isolate=`` share it. The caller applies the output redaction to what
    it shows (``run.output``). With ``pipeline``, a run whose network is
    ``"proxy"`` (asked by the caller or the policy) gets an egress proxy that
    decides each of its requests through that pipeline (:mod:`execgate.egress`)."""
    wants_proxy = box.network == "proxy" or (call.sandbox or {}).get("network") == "proxy"
    with Run(call, decision) as run:
        if wants_proxy and pipeline is not None:
            receipt = decision.receipt
            done = behind_proxy(
                pipeline,
                box,
                argv,
                stdin=stdin,
                obligation=call.sandbox,
                principal=decision.input.get("principal"),
                context=decision.input.get("context"),
                parent=receipt.id if receipt is not None else None,
            )
        else:
            done = box.run(argv, stdin=stdin, obligation=call.sandbox)
        run.result = done.stdout
        failure = done.limit_hit or (
            f"signal {done.signal}" if done.signal is not None else f"exit {done.exit_code}"
        )
        run.extra = {
            "exit_code": done.exit_code,
            "signal": done.signal,
            "limit_hit": done.limit_hit,
            "truncated": done.truncated,
            "usage": dict(done.usage),
            "stdout_sha256": hashlib.sha256(done.stdout).hexdigest(),
            "stderr_sha256": hashlib.sha256(done.stderr).hexdigest(),
            "protections": dict(done.protections),
            "sandbox": dict(done.sandbox),
        }
        if not done.ok:
            run.error = failure
    return run, done


def behind_proxy(pipeline: Pipeline, box: Sandbox, argv: Sequence[str], **how: Any) -> Completed:
    """:func:`execgate.egress.run_behind_proxy`, or ``SandboxError`` when the
    egress extra is not installed."""
    try:
        from execgate.egress import run_behind_proxy
    except ImportError as e:  # h11 is the extra `execgate[egress]`
        raise SandboxError(f'network="proxy" needs execgate[egress] (h11): {e}') from None
    return run_behind_proxy(pipeline, box, argv, **how)
