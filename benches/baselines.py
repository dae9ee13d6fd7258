"""The baselines execgate is measured against: regopy (the fastest Python route to the
same Rego verdicts) and a pure-Python receipt log that does the same work as execgate's
(canonical JSON, SHA-256 chain, PyNaCl Ed25519 over the DSSE PAE, flock, one line per
record) with a pure-Python verifier (``cryptography``)."""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import inspect
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from execgate import SigningKey

ENTRYPOINT = "data.execgate.decision"
# regopy names bundle entry points as a slash path rather than a rule reference.
BUNDLE_ENTRYPOINT = "execgate/decision"


class BaselineDenied(Exception):
    """What the pure-Python guard raises for a denied call (ActionDenied needs a
    native Decision)."""


# --- the regopy baseline -------------------------------------------------------


def _now_rfc3339() -> str:
    # The gate puts "...T21:10:00.123456Z" in context.time. rego-cpp (regopy 1.5.2)
    # fails time.parse_rfc3339_ns on the "Z" suffix, and the policy denies a time
    # that does not parse; so the baseline writes the same instant with the
    # equivalent "+00:00" offset, which it parses, and does the same work.
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


class RegopyBaseline:
    """The same policy and data evaluated by regopy (rego-cpp), compiled once.

    ``Interpreter.build`` compiles the modules and data into a bundle once; each
    call then only sets the input and runs the bundle's plan for the entry
    point. That is regopy's fast path: a plain ``Interpreter.query`` compiles
    the policy again on every call (about 20x slower on this policy), which
    would flatter execgate. Per call it builds the
    same input document the gate builds (including a fresh ``context.time``; see
    ``_now_rfc3339`` for its one difference in spelling), so
    both sides do the same work from the same Python arguments.
    """

    def __init__(self, rego_path: Path, data_path: Path) -> None:
        # Imported here: regopy's allocator (snmalloc) does not start under
        # valgrind, which benches/ab.py --instructions runs the gate under.
        import regopy

        builder = regopy.Interpreter()
        builder.add_module(rego_path.name, rego_path.read_text())
        builder.add_data_json(data_path.read_text())
        start = time.perf_counter()
        self.bundle = builder.build(None, [BUNDLE_ENTRYPOINT])
        self.build_ms = (time.perf_counter() - start) * 1e3
        if not self.bundle.ok():
            raise SystemExit("regopy failed to build the bundle")
        self.rego = regopy.Interpreter()

    @staticmethod
    def input_document(action: str, args: dict[str, Any], principal: dict[str, Any]) -> dict:
        return {
            "action": {"name": action, "args": args},
            "principal": principal,
            "context": {"time": _now_rfc3339()},
        }

    def decide(self, action: str, args: dict[str, Any], principal: dict[str, Any]) -> dict:
        return self.evaluate(self.input_document(action, args, principal))

    def evaluate(self, document: dict[str, Any]) -> dict:
        # set_input(dict) walks the dict through regopy's C input builder. It
        # measured faster here than set_input_term(json.dumps(doc)) (regopy 1.5
        # has no set_input_json), so the baseline uses the faster of the two.
        self.rego.set_input(document)
        output = self.rego.query_bundle_entrypoint(self.bundle, BUNDLE_ENTRYPOINT)
        if not output.ok() or not output.results:
            raise RuntimeError(f"regopy query failed: {output}")
        return output.results[0].expressions[0]


# --- receipts and audit log: the pure-Python baseline ---------------------------
# The same records execgate writes (DESIGN.md §2 "Receipt"), built and signed in
# Python with the usual libraries, so "execgate vs Python" compares like for like.

PAYLOAD_TYPE = "application/vnd.execgate.receipt.v1+json"
_PAE_PREFIX = f"DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} ".encode()


def _canonical(value: Any) -> bytes:
    # For these payloads (ASCII strings, integers, no floats) this is byte for
    # byte RFC 8785, the form execgate signs; receipts_agree() checks it on
    # execgate's own payloads, and execgate's verifier (which rejects
    # non-canonical payloads) accepts the baseline's log.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pae(payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding: the bytes a receipt's signature covers."""
    return b"%s%d %s" % (_PAE_PREFIX, len(payload), payload)


def _utc_now() -> str:
    # The spelling execgate uses for "ts" (RFC 3339, UTC, microseconds, "Z").
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PythonReceiptLog:
    """execgate's audit log with ``signing="record"`` and ``durability="none"``,
    in Python.

    Each append does what execgate's does: take an exclusive ``flock`` (so
    several processes could share the file), check that no one else moved the
    file, add the chain fields (v, id, seq, ts, kid, prev), canonicalize,
    sign the DSSE PAE with PyNaCl (libsodium), and append the base64 envelope
    as one line in one ``write``. One difference: ids are ``uuid4`` (the
    stdlib of Python 3.11 has no ``uuid7``).
    """

    def __init__(self, path: Path, seed: bytes, kid: str) -> None:
        self.key = nacl.signing.SigningKey(seed)
        self.kid = kid
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self.length = 0
        self.seq = 0
        self.head: str | None = None

    def append(self, body: dict[str, Any]) -> str:
        """Completes ``body`` with the chain fields, appends it; returns its digest."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self.fd).st_size != self.length:
                # execgate re-reads the chain head here; this baseline has the
                # file to itself, so it never needs to.
                raise RuntimeError("another writer appended to the baseline log")
            body["v"] = 1
            body["id"] = str(uuid.uuid4())
            body["seq"] = self.seq + 1
            body["ts"] = _utc_now()
            body["kid"] = self.kid
            body["signing"] = "record"
            body["prev"] = self.head
            payload = _canonical(body)
            signature = self.key.sign(_pae(payload)).signature
            envelope = {
                "payloadType": PAYLOAD_TYPE,
                "payload": base64.b64encode(payload).decode(),
                "signatures": [{"keyid": self.kid, "sig": base64.b64encode(signature).decode()}],
            }
            line = json.dumps(envelope, separators=(",", ":")).encode() + b"\n"
            if os.write(self.fd, line) != len(line):
                raise OSError("short write to the baseline log")
            self.length += len(line)
            self.seq += 1
            self.head = _sha256(payload)
            return self.head
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


def decision_body(
    document: dict[str, Any], verdict: dict[str, Any], policy_sha256: str
) -> dict[str, Any]:
    """The fields of execgate's decision receipt (``decision_body`` in
    src/core/receipt.rs) before the log adds the chain fields."""
    action = document["action"]
    return {
        "kind": "decision",
        "decision": "allow" if verdict["allow"] else "deny",
        "mode": "enforce",
        "reasons": list(verdict["reasons"]),
        "obligations": verdict["obligations"],
        "action": {"name": action["name"], "args_sha256": _sha256(_canonical(action["args"]))},
        "principal": document["principal"],
        "context": document["context"],
        "policy": {"entrypoint": ENTRYPOINT, "sha256": policy_sha256},
        "input_sha256": _sha256(_canonical(document)),
    }


def completion_body(
    authorization: dict[str, Any],
    digest: str,
    start_ns: int,
    output: Any,
    error: BaseException | None,
) -> dict[str, Any]:
    """The fields of execgate's completion record (``completion_body``), linked
    to the decision payload ``authorization`` whose digest is ``digest``."""
    output_sha256: str | None = None
    if isinstance(output, str):
        output_sha256 = _sha256(output.encode())
    elif output is not None:
        output_sha256 = _sha256(_canonical(output))
    return {
        "kind": "completion",
        "authorization": {"id": authorization["id"], "sha256": digest},
        "outcome": {
            "status": "ok" if error is None else "error",
            "error_type": None if error is None else type(error).__qualname__,
            "duration_ns": time.perf_counter_ns() - start_ns,
            "output_sha256": output_sha256,
        },
    }


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class PythonReceiptGate:
    """``gate.check`` and ``@gate.guard`` with receipts, in Python: regopy's
    prepared bundle decides, :class:`PythonReceiptLog` records."""

    def __init__(self, regopy: RegopyBaseline, log: PythonReceiptLog, policy_sha256: str) -> None:
        self.regopy = regopy
        self.log = log
        self.policy_sha256 = policy_sha256

    def check(
        self, action: str, args: dict[str, Any], principal: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], str]:
        """Decides and records; returns the verdict, the receipt payload and its digest."""
        document = self.regopy.input_document(action, args, principal)
        verdict = self.regopy.evaluate(document)
        body = decision_body(document, verdict, self.policy_sha256)
        return verdict, body, self.log.append(body)

    def record(self, document: dict[str, Any], verdict: dict[str, Any]) -> str:
        """The receipt alone, for a verdict already reached; returns its digest."""
        return self.log.append(decision_body(document, verdict, self.policy_sha256))

    def guard(self, action: str, principal: dict[str, Any]) -> Decorator:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            # Defaults are bound once, at decoration, as execgate's guard does,
            # so the policy sees the same arguments (http_get's timeout).
            defaults = {
                name: p.default
                for name, p in inspect.signature(fn).parameters.items()
                if p.default is not p.empty
            }

            def wrapper(**kwargs: Any) -> Any:
                verdict, receipt, digest = self.check(action, {**defaults, **kwargs}, principal)
                if not verdict["allow"]:
                    raise BaselineDenied(verdict["reasons"])
                start = time.perf_counter_ns()
                try:
                    result = fn(**kwargs)
                except BaseException as e:
                    self.log.append(completion_body(receipt, digest, start, None, e))
                    raise
                self.log.append(completion_body(receipt, digest, start, result, None))
                return result

            return wrapper

        return decorate


class LogInvalid(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line


def python_verify_log(path: Path, key: Ed25519PublicKey, kid: str) -> Counter[str]:
    """The checks ``execgate.verify_log`` makes, in Python with ``cryptography``:
    envelope structure, canonical payload, format version, contiguous ``seq``,
    the ``prev`` hash chain, unique ids, every signature (one Ed25519 verify per
    signed record: ``cryptography`` has no batch verification), unsigned
    checkpoint-mode records sealed by a later signed one, and each completion
    linked to an open allowed decision. Returns counts by record kind; raises
    :class:`LogInvalid` naming the first bad line.
    """
    counts: Counter[str] = Counter()
    prev: str | None = None
    seen: set[str] = set()
    open_decisions: dict[str, tuple[str, bool]] = {}
    unsealed_from: int | None = None
    with open(path, "rb") as lines:
        for line_no, line in enumerate(lines, 1):
            if not line.endswith(b"\n"):
                raise LogInvalid(line_no, "torn tail")
            try:
                envelope = json.loads(line)
                if envelope["payloadType"] != PAYLOAD_TYPE:
                    raise ValueError("unexpected payloadType")
                payload = base64.b64decode(envelope["payload"], validate=True)
                body = json.loads(payload)
            except (ValueError, KeyError, TypeError) as e:
                raise LogInvalid(line_no, f"malformed record: {e}") from None
            if _canonical(body) != payload:
                raise LogInvalid(line_no, "payload is not canonical JSON")
            if body.get("v") != 1:
                raise LogInvalid(line_no, "unsupported format version")
            if body.get("seq") != counts.total() + 1:
                raise LogInvalid(line_no, f"seq {body.get('seq')} after {counts.total()}")
            if body.get("prev") != prev:
                raise LogInvalid(line_no, "chain break")
            record_id = body.get("id")
            if record_id in seen:
                raise LogInvalid(line_no, "duplicate record id")
            seen.add(record_id)
            signatures = envelope["signatures"]
            if signatures:
                sig = next((s["sig"] for s in signatures if s["keyid"] == kid), None)
                if sig is None:
                    raise LogInvalid(line_no, "signed by an unknown key")
                try:
                    key.verify(base64.b64decode(sig, validate=True), _pae(payload))
                except (InvalidSignature, ValueError):
                    raise LogInvalid(line_no, "bad signature") from None
                unsealed_from = None
            elif unsealed_from is None:
                unsealed_from = line_no
            digest = _sha256(payload)
            kind = body.get("kind")
            if kind == "decision":
                open_decisions[record_id] = (digest, body.get("decision") == "allow")
            elif kind == "completion":
                auth = body.get("authorization") or {}
                if open_decisions.get(auth.get("id", "")) != (auth.get("sha256"), True):
                    raise LogInvalid(line_no, "completion of an unknown, denied or finished call")
                open_decisions[auth["id"]] = (auth["sha256"], False)
            elif kind not in ("checkpoint", "recovery"):
                raise LogInvalid(line_no, f"unknown record kind {kind!r}")
            counts[kind] += 1
            prev = digest
    if unsealed_from is not None:
        raise LogInvalid(unsealed_from, "records not covered by any signature")
    return counts


@dataclass(frozen=True)
class Keys:
    """One Ed25519 key as each side holds it."""

    execgate: SigningKey
    seed: bytes  # the raw private key, for PyNaCl
    public: Ed25519PublicKey  # for the cryptography verifier
    kid: str

    @classmethod
    def generate(cls) -> Keys:
        key = SigningKey.generate()
        pem = key.to_pem()
        assert pem is not None  # returned, since no path was given
        private = load_pem_private_key(pem, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise SystemExit(f"execgate's PEM is not an Ed25519 key: {type(private)}")
        public = private.public_key()
        kid = _sha256(public.public_bytes_raw())[:32]  # execgate's key id
        if kid != key.kid:
            raise SystemExit(f"key ids differ: execgate {key.kid}, Python {kid}")
        return cls(key, private.private_bytes_raw(), public, kid)
