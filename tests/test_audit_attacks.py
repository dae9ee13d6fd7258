"""The audit log under attack: forged records, and a file changed under an open gate.

Each test does what someone who can write to the log (but has no signing key)
could do, and checks that nothing verifies as VALID or goes unreported.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import time

import pytest

import execgate
from execgate import AuditLog, SigningKey
from execgate.cli import main

POLICY = "package execgate\ndecision := true\n"


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def lines(path: pathlib.Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def payload_of(line: bytes) -> dict:  # type: ignore[type-arg]
    return json.loads(base64.b64decode(json.loads(line)["payload"]))


def canonical(payload: dict) -> bytes:  # type: ignore[type-arg]
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def envelope(payload: dict, signer: SigningKey | None = None) -> bytes:  # type: ignore[type-arg]
    """An envelope for `payload`, unsigned or signed by `signer` (stock Ed25519)."""
    body = canonical(payload)
    ptype = "application/vnd.execgate.receipt.v1+json"
    sigs = []
    if signer is not None:
        serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
        priv = serialization.load_pem_private_key(signer.to_pem(), None)
        pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype.encode(), len(body), body)
        sigs = [{"keyid": signer.kid, "sig": base64.b64encode(priv.sign(pae)).decode()}]
    env = {"payloadType": ptype, "payload": base64.b64encode(body).decode(), "signatures": sigs}
    return (json.dumps(env) + "\n").encode()


def chained_forgery(path: pathlib.Path, **fields: object) -> dict:  # type: ignore[type-arg]
    """A decision payload that continues the chain at the end of `path`."""
    last = lines(path)[-1]
    head = payload_of(last)
    env = json.loads(last)
    digest = __import__("hashlib").sha256(base64.b64decode(env["payload"])).hexdigest()
    forged = dict(head)
    forged.update(
        kind="decision",
        decision="allow",
        id="0190aaaa-0000-7000-8000-000000000001",
        seq=head["seq"] + 1,
        prev=digest,
        reasons=["bob dropped the production database"],
    )
    forged.update(fields)
    return forged


def verify_cli(path: pathlib.Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> str:
    pub = path.parent / "k.pub"
    if not pub.exists():
        key.verify_key.to_pem(pub)
    code = main(["verify", str(path), "--key", str(pub)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "VALID:" not in out
    return out


@pytest.mark.parametrize("claimed_mode", ["record", "checkpoint", None])
def test_unsigned_record_chained_over_is_caught(
    tmp_path: pathlib.Path,
    key: SigningKey,
    capsys: pytest.CaptureFixture[str],
    claimed_mode: str | None,
) -> None:
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        gate.check("ok")
        fields = {} if claimed_mode is None else {"signing": claimed_mode}
        forged = chained_forgery(path, **fields)
        if claimed_mode is None:
            forged.pop("signing", None)
        with path.open("ab") as f:
            f.write(envelope(forged))
        # The gate's next genuine record must not vouch for the forgery.
        assert gate.check("ok").allowed
    r = execgate.verify_log(path, key.verify_key)
    assert not r.ok and r.line == 2, (r.line, r.reason)
    assert "unsigned" in (r.reason or "") or "covered by no signature" in (r.reason or "")
    # The writer said what it found, in a signed record right after it.
    note = payload_of(lines(path)[2])
    assert note["kind"] == "recovery" and note["recovered"]["cause"] == "unverified_head"
    assert "INVALID at line 2" in verify_cli(path, key, capsys)


def test_record_signed_by_an_unknown_key_in_the_middle(
    tmp_path: pathlib.Path, key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log.jsonl"
    intruder = SigningKey.generate()
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        gate.check("ok")
        with path.open("ab") as f:
            f.write(envelope(chained_forgery(path, kid=intruder.kid), intruder))
        gate.check("ok")
        gate.check("ok")
    r = execgate.verify_log(path, key.verify_key)
    assert not r.ok and r.line == 2 and "unknown key" in (r.reason or "")
    assert "INVALID at line 2" in verify_cli(path, key, capsys)


def test_payload_kid_must_match_the_signer(tmp_path: pathlib.Path, key: SigningKey) -> None:
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        gate.check("ok")
    # Signed by the real key, but the payload claims another signer.
    with path.open("ab") as f:
        f.write(envelope(chained_forgery(path, kid="ab" * 16), key))
    r = execgate.verify_log(path, key.verify_key)
    assert not r.ok and r.line == 2 and "does not match the key" in (r.reason or "")
    receipt = execgate.Receipt.from_json(lines(path)[1].decode())
    with pytest.raises(execgate.SignatureError, match="does not match the key"):
        receipt.verify(key.verify_key)


def test_checkpoint_mode_forgery_is_not_sealed(
    tmp_path: pathlib.Path, key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log.jsonl"
    log = AuditLog(path, key, signing="checkpoint", checkpoint_every=100, checkpoint_interval=60)
    with execgate.Gate(POLICY, audit=log) as gate:
        gate.check("ok")
        gate.check("ok")
        with path.open("ab") as f:
            f.write(envelope(chained_forgery(path)))
        for _ in range(3):
            gate.check("ok")
    last = payload_of(lines(path)[-1])
    assert last["kind"] == "checkpoint" and last["sealed"] == [[1, 2], [4, 6]]
    r = execgate.verify_log(path, key.verify_key)
    assert not r.ok and r.line == 3 and "covered by no signature" in (r.reason or "")
    assert "INVALID at line 3" in verify_cli(path, key, capsys)


def test_forged_checkpoint_claims_are_refused(tmp_path: pathlib.Path, key: SigningKey) -> None:
    """A checkpoint (even by the key holder) cannot seal what is not an unsigned record."""
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        gate.check("ok")
    with path.open("ab") as f:
        f.write(envelope(chained_forgery(path, kind="checkpoint", sealed=[[1, 1]]), key))
    r = execgate.verify_log(path, key.verify_key)
    assert not r.ok and r.line == 2 and "claims to seal" in (r.reason or "")


def test_truncation_under_an_open_gate_is_recorded(
    tmp_path: pathlib.Path, key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        for _ in range(5):
            gate.check("ok")
        keep = b"".join(lines(path)[:2])
        with path.open("r+b") as f:
            f.truncate(len(keep))
        d = gate.check("ok")
        assert d.allowed and d.receipt is not None and d.receipt.seq == 4
    note = payload_of(lines(path)[2])
    assert note["recovered"]["cause"] == "truncated"
    assert note["recovered"]["expected"]["seq"] == 5 and note["recovered"]["found"]["seq"] == 2
    r = execgate.verify_log(path, key.verify_key)
    assert not r.ok and r.line == 3 and "missing" in (r.reason or "")
    assert r.incidents and r.incidents[0][0] == 3
    out = verify_cli(path, key, capsys)
    assert "NOT WHOLE" in out and "line 3" in out


def test_truncation_to_nothing_is_not_a_silent_new_chain(
    tmp_path: pathlib.Path, key: SigningKey
) -> None:
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        for _ in range(3):
            gate.check("ok")
        with path.open("r+b") as f:
            f.truncate(0)
        gate.check("ok")
    first = payload_of(lines(path)[0])
    assert first["kind"] == "recovery" and first["recovered"]["cause"] == "truncated"
    assert not execgate.verify_log(path, key.verify_key).ok


def rewrite_in_place(path: pathlib.Path, index: int, old: bytes, new: bytes) -> None:
    """Replaces `old` by `new` (same length) in the payload of line `index`,
    writing into the file in place: same inode, same length."""
    assert len(old) == len(new)
    all_lines = lines(path)
    env = json.loads(all_lines[index])
    body = base64.b64decode(env["payload"])
    assert old in body
    env["payload"] = base64.b64encode(body.replace(old, new, 1)).decode()
    forged = (json.dumps(env, separators=(",", ":")) + "\n").encode()
    assert len(forged) == len(all_lines[index])
    with path.open("r+b") as f:
        f.seek(sum(len(x) for x in all_lines[:index]))
        f.write(forged)


@pytest.mark.parametrize("signing", ["record", "checkpoint"])
@pytest.mark.parametrize("which", ["last", "earlier"])
def test_same_length_rewrite_under_an_open_gate_is_recorded(
    tmp_path: pathlib.Path, key: SigningKey, signing: str, which: str
) -> None:
    """A record rewritten in place (same inode, same length) while a gate has
    the log open: the gate's next record is a signed `rewritten` recovery
    record naming it, and the log does not verify."""
    path = tmp_path / "log.jsonl"
    log = AuditLog(path, key, signing=signing)
    with execgate.Gate(POLICY, audit=log) as gate:
        for name in ("ok", "ok", "ok", "ok"):
            assert gate.check(name).allowed
        before = path.stat()
        index = len(lines(path)) - 1 if which == "last" else 1
        rewrite_in_place(path, index, b'"name":"ok"', b'"name":"rm"')
        after = path.stat()
        assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
        d = gate.check("ok")
        assert d.allowed, d.reasons
    notes = [payload_of(x) for x in lines(path)]
    causes = [n["recovered"]["cause"] for n in notes if n["kind"] == "recovery"]
    assert "rewritten" in causes, causes
    # verify stops at the forged record itself (a bad signature, a chain break
    # after it, or, in checkpoint mode, a record no checkpoint seals: the
    # writer's checkpoints never vouch for what replaced its records).
    r = execgate.verify_log(path, key.verify_key)
    assert not r.ok and r.line in (index + 1, index + 2), (r.line, r.reason)


def test_same_length_garbage_in_the_last_record_denies(
    tmp_path: pathlib.Path, key: SigningKey
) -> None:
    """A byte of the last record overwritten so it no longer parses: the gate
    refuses to chain onto it (error="audit"), and keeps refusing."""
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        gate.check("ok")
        gate.check("ok")
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.seek(size - 10)
            f.write(b"#")
        for _ in range(2):
            d = gate.check("ok")
            assert not d.allowed and d.error == "audit", d.reasons
            assert any("last record cannot be read" in x for x in d.reasons), d.reasons
    assert path.stat().st_size == size


def test_metadata_change_alone_is_not_an_incident(tmp_path: pathlib.Path, key: SigningKey) -> None:
    """chmod and touch move the change time, not the records: no false alarm."""
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        gate.check("ok")
        os.chmod(path, 0o640)
        os.utime(path, (1, 1))
        assert gate.check("ok").allowed
    r = execgate.verify_log(path, key.verify_key)
    assert r.ok and r.records == 2 and r.recoveries == 0, r.reason


@pytest.mark.parametrize("how", ["unlink", "rename", "replace", "replace-with-copy"])
def test_unlinked_or_replaced_log_denies_with_audit_error(
    tmp_path: pathlib.Path, key: SigningKey, how: str
) -> None:
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        assert gate.check("ok").allowed
        before = path.read_bytes()
        if how == "unlink":
            path.unlink()
        elif how == "rename":
            path.rename(tmp_path / "rotated.jsonl")
        elif how == "replace":
            (tmp_path / "new").write_bytes(b"")
            os.replace(tmp_path / "new", path)
        else:  # the same bytes in a new file: still not the file the writer holds
            (tmp_path / "new").write_bytes(before)
            os.replace(tmp_path / "new", path)
        for _ in range(2):  # and it stays denied
            d = gate.check("ok")
            assert not d.allowed and d.error == "audit", d.reasons
            assert any(
                "unlinked or moved away" in r or "names another file" in r for r in d.reasons
            )
    if path.exists():
        assert path.read_bytes() in (b"", before)


def test_symlink_at_the_log_path_is_not_followed(tmp_path: pathlib.Path, key: SigningKey) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious, no newline")
    path = tmp_path / "log.jsonl"
    path.symlink_to(target)
    with pytest.raises(execgate.AuditLogError, match="symbolic link"):
        AuditLog(path, key)
    assert target.read_bytes() == b"precious, no newline"


def test_large_torn_tail_opens_quickly(tmp_path: pathlib.Path, key: SigningKey) -> None:
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        gate.check("ok")
    with path.open("ab") as f:
        f.write(b"x" * (32 << 20))
    start = time.monotonic()
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        elapsed = time.monotonic() - start
        gate.check("ok")
    assert elapsed < 30, elapsed  # was 74 s when the scan was quadratic
    r = execgate.verify_log(path, key.verify_key)
    assert r.ok and r.recoveries == 1 and r.records == 3


def test_log_show_on_a_binary_file_is_clean(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 4 + b"\n\xff\xfe\n")
    assert main(["log", "show", str(path)]) == 0
    out = capsys.readouterr()
    assert "not UTF-8" in out.out and "Traceback" not in out.err


def test_verify_of_an_empty_file_says_it_holds_nothing(
    tmp_path: pathlib.Path, key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert "no records" in verify_cli(path, key, capsys)


def test_verify_reports_progress(tmp_path: pathlib.Path, key: SigningKey) -> None:
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        for i in range(20):
            gate.check("ok", {"i": i})
    seen: list[tuple[int, int]] = []
    r = execgate.verify_log(path, key.verify_key, progress=lambda d, t: seen.append((d, t)))
    size = path.stat().st_size
    assert r.ok and seen and seen[-1] == (size, size)


NOTE = "user.execgate.head"


@pytest.mark.parametrize("how", ["appended", "note-replayed", "same-length-line"])
def test_forgery_after_another_writers_hand_off_note_is_caught(
    tmp_path: pathlib.Path, key: SigningKey, how: str
) -> None:
    """Two writers on one log (as two processes): the one that lets the lock go
    leaves a MAC'd note naming the head, and the other trusts the head by it.
    A forged record after a genuine note, a genuine note put back over a forged
    record, or the last line replaced by a same-length forgery under its note:
    the other writer verifies the head, and records that it could not."""
    path = tmp_path / "log.jsonl"
    with (
        execgate.Gate(POLICY, audit=AuditLog(path, key)) as first,
        execgate.Gate(POLICY, audit=AuditLog(path, key)) as second,
    ):
        # A writer leaves notes once it has seen another writer's records.
        assert first.check("ok").allowed and second.check("ok").allowed
        assert first.check("ok").allowed
        try:
            older = os.getxattr(path, NOTE)
        except OSError:
            pytest.skip("no user extended attributes here")
        assert first.check("ok").allowed
        note = os.getxattr(path, NOTE)
        assert len(note) == len(older) and note != older
        if how == "same-length-line":
            data = bytearray(path.read_bytes())
            at = data.rindex(b'"sig":"') + 7  # a character of the last signature
            data[at] = ord("B") if data[at] == ord("A") else ord("A")
            with path.open("r+b") as f:
                f.write(bytes(data))
            os.setxattr(path, NOTE, note)
            forged_line = 4
        else:
            with path.open("ab") as f:
                f.write(envelope(chained_forgery(path)))
            if how == "note-replayed":
                os.setxattr(path, NOTE, older)
            forged_line = 5
        assert second.check("ok").allowed
    recovery = payload_of(lines(path)[forged_line])
    assert recovery["kind"] == "recovery", recovery
    assert recovery["recovered"]["cause"] == "unverified_head"
    r = execgate.verify_log(path, key.verify_key)
    assert not r.ok and r.line == forged_line, (r.line, r.reason)
