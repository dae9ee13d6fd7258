"""Typed stubs for the native extension ``execgate._core``."""

import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, final

_Mode = Literal["enforce", "audit"]
_Error = Literal[
    "undefined",
    "type",
    "conflict",
    "limit",
    "runtime",
    "audit",
    "obligation",
    "approval",
    "refused",
    "state",
    "stale",
]
_Status = Literal["ok", "error"]

__all__ = [
    "AuditLog",
    "Bundle",
    "BundleKey",
    "Call",
    "Capabilities",
    "ChainVerifier",
    "Decision",
    "Gate",
    "LogReader",
    "Receipt",
    "SigningKey",
    "VerifyKey",
    "VerifyReport",
    "__version__",
    "build_bundle",
    "private_network",
    "rebuild_state",
    "redact",
    "rego_tests",
    "run_rego_test",
    "run_sandboxed",
    "verify",
    "verify_set",
]

__version__: str

@final
class Gate:
    """The native gate: compiled policy, evaluation and reload."""

    def __new__(
        cls,
        *,
        sources: list[tuple[str, str]] = ...,
        paths: list[str] = ...,
        data: list[dict[str, Any]] = ...,
        data_files: list[str] = ...,
        entrypoint: str = ...,
        mode: _Mode = "enforce",
        max_instructions: int = ...,
        timeout: float = ...,
        max_memory: int = ...,
        log: AuditLog | None = None,
        record_input: bool = False,
        history: int | None = None,
        bundle: Bundle | None = None,
        bundle_max_age: float | None = None,
        bundle_name: str = ...,
        state: str | None = None,
        state_timeout: float = ...,
        state_connect_timeout: float = ...,
    ) -> Gate: ...
    def decide(
        self,
        action: str,
        args: dict[str, Any] | None = None,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        time: str | None = None,
        capabilities: Capabilities | None = None,
        authorize: bool = False,
    ) -> Call: ...
    def check(
        self,
        action: str,
        args: dict[str, Any] | None = None,
        principal: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        time: str | None = None,
    ) -> Decision: ...
    def reload(
        self,
        *,
        sources: list[tuple[str, str]] | None = None,
        paths: list[str] | None = None,
        data: list[dict[str, Any]] | None = None,
        data_files: list[str] | None = None,
        bundle: Bundle | None = None,
    ) -> str: ...
    def confirm_bundle(self, age: float = 0.0) -> None: ...
    def record_outcome(
        self,
        receipt: Receipt,
        *,
        status: _Status,
        duration_ns: int = 0,
        output: object | None = None,
        error_type: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Receipt: ...
    def redact(
        self,
        value: Any,
        *,
        transform: Literal["mask", "hash", "drop", "deny"] = "mask",
        detectors: list[str] | None = None,
        path: str = ...,
    ) -> tuple[Any, list[dict[str, Any]]]: ...
    @property
    def log(self) -> AuditLog | None: ...
    @property
    def policy_digest(self) -> str: ...
    @property
    def policy_revision(self) -> str | None: ...
    @property
    def entrypoint(self) -> str: ...
    @property
    def mode(self) -> _Mode: ...
    @property
    def max_instructions(self) -> int: ...
    @property
    def timeout(self) -> float: ...
    @property
    def max_memory(self) -> int: ...

@final
class Decision:
    """An immutable authorization decision."""

    @property
    def allowed(self) -> bool: ...
    @property
    def blocked(self) -> bool: ...
    @property
    def mode(self) -> _Mode: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...
    @property
    def obligations(self) -> dict[str, Any]: ...
    @property
    def input(self) -> dict[str, Any]: ...
    @property
    def action(self) -> str: ...
    @property
    def policy_digest(self) -> str: ...
    @property
    def policy_revision(self) -> str | None: ...
    @property
    def context(self) -> dict[str, Any]: ...
    @property
    def entrypoint(self) -> str: ...
    @property
    def duration_ns(self) -> int: ...
    @property
    def error(self) -> _Error | None: ...
    @property
    def approval(self) -> dict[str, Any] | None: ...
    @property
    def receipt(self) -> Receipt | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Capabilities:
    def __new__(
        cls,
        *,
        sandbox: bool = False,
        rewrite: bool = True,
        replaceable: list[str] | None = None,
        output: bool = True,
    ) -> Capabilities: ...

@final
class Call:
    """One call on its way through the pipeline; each method is one stage."""

    @property
    def decision(self) -> Decision: ...
    @property
    def approval(self) -> dict[str, Any] | None: ...
    def answer(
        self, *, approved: bool, approver: str, comment: str | None = None, timed_out: bool = False
    ) -> None: ...
    def refuse(self, reason: str) -> None: ...
    def authorize(self) -> Decision: ...
    def arguments(self) -> dict[str, Any]: ...
    def arguments_if_copied(self) -> dict[str, Any] | None: ...
    @property
    def sandbox(self) -> dict[str, Any] | None: ...
    @property
    def redacts_output(self) -> bool: ...
    @property
    def tracked(self) -> bool: ...
    def redact_output(self, value: Any) -> Any: ...
    def complete(
        self,
        status: _Status,
        duration_ns: int = 0,
        output: object | None = None,
        error_type: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str | None: ...

@final
class SigningKey:
    """An Ed25519 private key."""

    @staticmethod
    def generate() -> SigningKey: ...
    @staticmethod
    def from_pem(
        source: bytes | str | os.PathLike[str], password: bytes | None = None
    ) -> SigningKey: ...
    def to_pem(
        self, path: str | os.PathLike[str] | None = None, *, password: bytes | None = None
    ) -> bytes | None: ...
    @property
    def verify_key(self) -> VerifyKey: ...
    @property
    def kid(self) -> str: ...

@final
class VerifyKey:
    """An Ed25519 public key."""

    @staticmethod
    def from_pem(source: bytes | str | os.PathLike[str]) -> VerifyKey: ...
    def to_pem(self, path: str | os.PathLike[str] | None = None) -> bytes | None: ...
    def to_bytes(self) -> bytes: ...
    @property
    def kid(self) -> str: ...
    def __eq__(self, value: object, /) -> bool: ...
    __hash__: None  # type: ignore[assignment]

@final
class Receipt:
    """A signed record: a DSSE envelope around canonical JSON."""

    @staticmethod
    def from_json(text: str) -> Receipt: ...
    def verify(self, key: VerifyKey) -> bool: ...
    @property
    def payload(self) -> dict[str, Any]: ...
    @property
    def envelope(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def signed(self) -> bool: ...

@final
class AuditLog:
    """The hash-chained, signed audit log (in memory when ``path`` is None)."""

    def __new__(
        cls,
        path: str | os.PathLike[str] | None,
        key: SigningKey,
        *,
        durability: Literal["none", "batch", "always"] = "none",
        batch_interval: float = 0.05,
        signing: Literal["record", "checkpoint"] = "record",
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 1.0,
        state_every: int = 10000,
        rotate_bytes: int = 0,
    ) -> AuditLog: ...
    def close(self) -> None: ...
    def flush(self) -> None: ...
    def rotate(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def path(self) -> str | None: ...
    @property
    def verify_key(self) -> VerifyKey: ...

@final
class BundleKey:
    """A public key for bundle signatures: Ed25519 (EdDSA), RSA (RS256), P-256 (ES256)."""

    @staticmethod
    def from_pem(source: bytes | str | os.PathLike[str]) -> BundleKey: ...
    @property
    def algorithm(self) -> Literal["EdDSA", "RS256", "ES256"]: ...
    @property
    def id(self) -> str: ...

@final
class LogReader:
    """A log's records by seq, across rotated files."""

    def __new__(cls, path: str | os.PathLike[str]) -> LogReader: ...
    def log_id(self) -> str | None: ...
    def read_from(
        self, seq: int, max_records: int = 1000, max_bytes: int = ...
    ) -> tuple[list[int], list[str], list[str]]: ...

@final
class ChainVerifier:
    """Verifies one chain fed as ``(seq, envelope)`` rows in seq order."""

    def __new__(
        cls,
        keys: list[VerifyKey] = ...,
        keyring_dir: str | None = None,
        log_id: str | None = None,
    ) -> ChainVerifier: ...
    def push(self, rows: list[tuple[int, str]]) -> bool: ...
    def finish(self) -> VerifyReport: ...

@final
class Bundle:
    """An OPA-format bundle whose signature and file list verified."""

    @staticmethod
    def read(path: str | os.PathLike[str], key: VerifyKey | BundleKey) -> Bundle: ...
    @staticmethod
    def from_bytes(data: bytes, key: VerifyKey | BundleKey) -> Bundle: ...
    @property
    def revision(self) -> str: ...
    @property
    def roots(self) -> list[str]: ...

def build_bundle(
    directory: str | os.PathLike[str],
    key: SigningKey,
    out: str | os.PathLike[str],
    revision: str | None = None,
) -> str: ...

@final
class VerifyReport:
    """What ``verify_log`` found."""

    @property
    def ok(self) -> bool: ...
    @property
    def records(self) -> int: ...
    @property
    def allowed(self) -> int: ...
    @property
    def denied(self) -> int: ...
    @property
    def completions(self) -> int: ...
    @property
    def recoveries(self) -> int: ...
    @property
    def approvals(self) -> int: ...
    @property
    def checkpoints(self) -> int: ...
    @property
    def states(self) -> int: ...
    @property
    def rotations(self) -> int: ...
    @property
    def first_ts(self) -> str | None: ...
    @property
    def last_ts(self) -> str | None: ...
    @property
    def keys(self) -> list[str]: ...
    @property
    def unfinished(self) -> list[str]: ...
    @property
    def unfinished_count(self) -> int: ...
    @property
    def head(self) -> str | None: ...
    @property
    def incidents(self) -> list[tuple[int, str]]: ...
    @property
    def line(self) -> int | None: ...
    @property
    def reason(self) -> str | None: ...

def verify(
    path: str | os.PathLike[str],
    keys: list[VerifyKey] = ...,
    keyring_dir: str | None = None,
    progress: Callable[[int, int], object] | None = None,
    after: str | None = None,
) -> VerifyReport: ...
def rebuild_state(
    state: str,
    paths: list[str],
    keys: list[VerifyKey] = ...,
    keyring_dir: str | None = None,
    history: int = ...,
    timeout: float = ...,
    connect_timeout: float = ...,
) -> dict[str, Any]: ...
def verify_set(
    paths: list[str],
    keys: list[VerifyKey] = ...,
    keyring_dir: str | None = None,
    progress: Callable[[int, int], object] | None = None,
    after: str | None = None,
) -> VerifyReport: ...
def private_network() -> tuple[int, int, int]: ...
def run_sandboxed(
    argv: list[str], spec: dict[str, Any], stdin: bytes = ..., obligation: Any = None
) -> dict[str, Any]: ...
def rego_tests(
    *,
    sources: list[tuple[str, str]] = ...,
    paths: list[str] = ...,
    data: list[dict[str, Any]] = ...,
    data_files: list[str] = ...,
) -> list[tuple[str, str]]: ...
def run_rego_test(
    rule: str,
    *,
    sources: list[tuple[str, str]] = ...,
    paths: list[str] = ...,
    data: list[dict[str, Any]] = ...,
    data_files: list[str] = ...,
) -> tuple[str, str]: ...
def redact(
    value: Any,
    *,
    detectors: list[str] | None = None,
    transform: str = "mask",
    key: bytes = ...,
    custom: dict[str, str] = ...,
) -> tuple[Any, list[dict[str, Any]]]: ...
