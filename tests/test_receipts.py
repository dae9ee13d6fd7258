"""Keys and signed receipts."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess

import pytest

import execgate
from execgate import Receipt, SigningKey, VerifyKey

POLICY = 'package execgate\ndecision := {"allow": input.action.name == "ok", "reasons": ["r"]}\n'


def test_key_files_round_trip_with_mode_0600(tmp_path: pathlib.Path) -> None:
    key = SigningKey.generate()
    key.to_pem(tmp_path / "k.pem")
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    key.verify_key.to_pem(tmp_path / "k.pub")
    loaded = SigningKey.from_pem(tmp_path / "k.pem")
    assert loaded.kid == key.kid
    assert VerifyKey.from_pem(tmp_path / "k.pub") == key.verify_key
    assert SigningKey.from_pem(key.to_pem()).kid == key.kid  # from bytes
    raw = key.verify_key.to_bytes()
    assert len(raw) == 32 and key.kid == hashlib.sha256(raw).hexdigest()[:32]
    with pytest.raises(execgate.SignatureError, match="File exists"):
        key.to_pem(tmp_path / "k.pem")


def test_bad_key_files_are_clear_errors(tmp_path: pathlib.Path) -> None:
    key = SigningKey.generate()
    key.to_pem(tmp_path / "k.pem")
    os.chmod(tmp_path / "k.pem", 0o644)
    with pytest.raises(execgate.SignatureError, match="group or others") as info:
        SigningKey.from_pem(tmp_path / "k.pem")
    assert info.value.path == str(tmp_path / "k.pem")
    with pytest.raises(execgate.SignatureError, match="cannot read key file"):
        SigningKey.from_pem(tmp_path / "missing.pem")
    key.verify_key.to_pem(tmp_path / "k.pub")
    os.chmod(tmp_path / "k.pub", 0o600)
    with pytest.raises(execgate.SignatureError, match="public key"):
        SigningKey.from_pem(tmp_path / "k.pub")
    with pytest.raises(execgate.SignatureError, match="private key"):
        VerifyKey.from_pem(key.to_pem())
    with pytest.raises(execgate.SignatureError):
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    # A gate given an unusable key path does not start.
    with pytest.raises(execgate.SignatureError):
        execgate.Gate(POLICY, key=tmp_path / "missing.pem")


def test_encrypted_keys(tmp_path: pathlib.Path) -> None:
    key = SigningKey.generate()
    key.to_pem(tmp_path / "k.pem", password=b"s3cret")
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "k.pem").read_bytes()
    with pytest.raises(execgate.SignatureError, match="password"):
        SigningKey.from_pem(tmp_path / "k.pem")
    with pytest.raises(execgate.SignatureError, match="wrong password"):
        SigningKey.from_pem(tmp_path / "k.pem", password=b"nope")
    assert SigningKey.from_pem(tmp_path / "k.pem", password=b"s3cret").kid == key.kid


def test_keys_are_readable_by_cryptography_and_openssl(tmp_path: pathlib.Path) -> None:
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    key = SigningKey.generate()
    key.to_pem(tmp_path / "k.pem")
    key.to_pem(tmp_path / "e.pem", password=b"pw")
    private = serialization.load_pem_private_key((tmp_path / "k.pem").read_bytes(), None)
    raw_pub = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert raw_pub == key.verify_key.to_bytes()
    serialization.load_pem_private_key((tmp_path / "e.pem").read_bytes(), b"pw")
    if shutil.which("openssl"):
        out = subprocess.run(
            ["openssl", "pkey", "-in", str(tmp_path / "k.pem"), "-noout", "-text"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "ED25519 Private-Key" in out.stdout


def test_every_decision_is_receipted_and_verifies() -> None:
    key = SigningKey.generate()
    gate = execgate.Gate(POLICY, key=key)
    allowed = gate.check("ok", {"secret": "hunter2"})
    denied = gate.check("nope")
    for d, verdict in ((allowed, "allow"), (denied, "deny")):
        assert d.receipt is not None and d.receipt.signed
        assert d.receipt.verify(key.verify_key) is True
        p = d.receipt.payload
        assert p["decision"] == verdict and p["kind"] == "decision" and p["v"] == 1
        assert p["kid"] == key.kid and p["policy"]["sha256"] == gate.policy_digest
        assert p["reasons"] == list(d.reasons)
    assert (allowed.receipt.seq, denied.receipt.seq) == (1, 2)
    assert allowed.receipt.payload["prev"] is None
    assert denied.receipt.payload["prev"] == allowed.receipt.digest
    # Arguments appear only as a digest.
    assert "hunter2" not in allowed.receipt.envelope
    assert "hunter2" not in str(allowed.receipt.payload)
    with pytest.raises(execgate.SignatureError, match="not signed by key"):
        allowed.receipt.verify(SigningKey.generate().verify_key)


def test_receipt_json_round_trip_and_tampering() -> None:
    key = SigningKey.generate()
    receipt = execgate.Gate(POLICY, key=key).check("ok").receipt
    assert receipt is not None
    again = Receipt.from_json(receipt.envelope)
    assert again.digest == receipt.digest and again.verify(key.verify_key)
    import base64
    import json

    env = json.loads(receipt.envelope)
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["decision"] = "allow" if payload["decision"] == "deny" else "deny"
    from execgate._core import Receipt as R

    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    env["payload"] = base64.b64encode(canonical.encode()).decode()
    forged = R.from_json(json.dumps(env))
    with pytest.raises(execgate.SignatureError, match="bad signature"):
        forged.verify(key.verify_key)
    env["payload"] = base64.b64encode(json.dumps(payload, indent=1).encode()).decode()
    with pytest.raises(execgate.SignatureError, match="canonical"):
        R.from_json(json.dumps(env))
    with pytest.raises(execgate.SignatureError, match="malformed"):
        R.from_json("{not json")


def test_record_outcome_links_to_authorization() -> None:
    key = SigningKey.generate()
    gate = execgate.Gate(POLICY, key=key)
    d = gate.check("ok")
    assert d.receipt is not None
    done = gate.record_outcome(d.receipt, output="result text", duration=0.25)
    p = done.payload
    assert p["kind"] == "completion"
    assert p["authorization"] == {"id": d.receipt.id, "sha256": d.receipt.digest}
    assert p["outcome"]["status"] == "ok" and p["outcome"]["duration_ns"] == 250_000_000
    assert p["outcome"]["output_sha256"] == hashlib.sha256(b"result text").hexdigest()
    failed = gate.record_outcome(d.receipt, error=ValueError("boom"))
    assert failed.payload["outcome"]["status"] == "error"
    assert failed.payload["outcome"]["error_type"] == "ValueError"
    with pytest.raises(execgate.ExecgateError, match="decision receipt"):
        gate.record_outcome(done)
    with pytest.raises(execgate.ExecgateError, match="no key"):
        execgate.Gate(POLICY).record_outcome(d.receipt)


def test_guard_records_completion_for_results_and_exceptions(tmp_path) -> None:
    key = SigningKey.generate()
    log = tmp_path / "audit.jsonl"
    gate = execgate.Gate(POLICY, key=key, audit=log)

    @gate.guard(action="ok")
    def tool(x: int) -> bytes:
        if x < 0:
            raise KeyError(x)
        return b"\x00\x01"

    assert tool(1) == b"\x00\x01"
    with pytest.raises(KeyError):
        tool(-1)
    gate.close()
    records = [execgate.Receipt.from_json(line) for line in log.read_text().splitlines()]
    completions = [r for r in records if r.payload["kind"] == "completion"]
    assert [c.payload["outcome"]["status"] for c in completions] == ["ok", "error"]
    assert (
        completions[0].payload["outcome"]["output_sha256"]
        == hashlib.sha256(b"\x00\x01").hexdigest()
    )
    assert completions[1].payload["outcome"]["error_type"] == "KeyError"
