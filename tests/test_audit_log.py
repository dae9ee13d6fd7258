"""The audit log: tampering, concurrency, crashes, durability, unwritable storage."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import execgate
from conftest import mount
from execgate import AuditLog, SigningKey

POLICY = 'package execgate\ndecision := {"allow": input.action.name != "bad", "reasons": []}\n'


def write_log(path: pathlib.Path, key: SigningKey, n: int = 6) -> None:
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        for i in range(n):
            d = gate.check("bad" if i % 3 == 2 else "ok", {"i": i})
            if d.allowed and d.receipt is not None:
                gate.record_outcome(d.receipt, output=i)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def log(tmp_path: pathlib.Path, key: SigningKey) -> pathlib.Path:
    path = tmp_path / "audit.jsonl"
    write_log(path, key)
    return path


def lines(path: pathlib.Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def verify(path: pathlib.Path, key: SigningKey) -> execgate.VerifyReport:
    return execgate.verify_log(path, key.verify_key)


def checkpointed(path: pathlib.Path, key: SigningKey, n: int) -> execgate.VerifyReport:
    """The log's report once it holds `n` checkpoints (written in the
    background), or after 10 s."""
    deadline = time.monotonic() + 10
    while (r := verify(path, key)).checkpoints < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return r


def test_clean_log_verifies_with_counts(log: pathlib.Path, key: SigningKey) -> None:
    r = verify(log, key)
    assert r.ok, r.reason
    assert (r.records, r.allowed, r.denied, r.completions) == (10, 4, 2, 4)
    assert r.keys == [key.kid] and r.unfinished == []
    assert r.first_ts is not None and r.first_ts <= (r.last_ts or "")


def test_wrong_key_is_caught_at_line_1(log: pathlib.Path) -> None:
    r = verify(log, SigningKey.generate())
    assert not r.ok and r.line == 1 and "unknown key" in (r.reason or "")


def _edit_payload(line: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    env = json.loads(line)
    payload = json.loads(base64.b64decode(env["payload"]))
    edit(payload)
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    env["payload"] = base64.b64encode(canonical.encode()).decode()
    return (json.dumps(env, separators=(",", ":")) + "\n").encode()


def _resign(payload: dict, key: SigningKey) -> bytes:  # type: ignore[type-arg]
    """A correctly signed envelope for an edited payload (as the key holder could make)."""
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    priv = serialization.load_pem_private_key(key.to_pem(), None)
    canonical = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    ptype = "application/vnd.execgate.receipt.v1+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype.encode(), len(canonical), canonical)
    env = {
        "payloadType": ptype,
        "payload": base64.b64encode(canonical).decode(),
        "signatures": [{"keyid": key.kid, "sig": base64.b64encode(priv.sign(pae)).decode()}],
    }
    return (json.dumps(env) + "\n").encode()


def test_flipped_byte_in_payload_is_a_bad_signature(log: pathlib.Path, key: SigningKey) -> None:
    ls = lines(log)
    ls[3] = _edit_payload(ls[3], lambda p: p.update(decision="allow"))
    log.write_bytes(b"".join(ls))
    r = verify(log, key)
    assert (r.ok, r.line, r.reason) == (False, 4, "bad signature")


def test_flipped_byte_in_base64_payload_is_caught(log: pathlib.Path, key: SigningKey) -> None:
    ls = lines(log)
    env = json.loads(ls[2])
    raw = bytearray(base64.b64decode(env["payload"]))
    raw[raw.index(b'"decision":"') + 12] ^= 0x01  # a -> ` / d -> e
    env["payload"] = base64.b64encode(bytes(raw)).decode()
    ls[2] = (json.dumps(env) + "\n").encode()
    log.write_bytes(b"".join(ls))
    r = verify(log, key)
    assert not r.ok and r.line == 3


def test_flipped_signature_is_caught(log: pathlib.Path, key: SigningKey) -> None:
    ls = lines(log)
    env = json.loads(ls[5])
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[10] ^= 0x40
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    ls[5] = (json.dumps(env) + "\n").encode()
    log.write_bytes(b"".join(ls))
    r = verify(log, key)
    assert (r.ok, r.line, r.reason) == (False, 6, "bad signature")


def test_resigned_chain_break_is_caught(log: pathlib.Path, key: SigningKey) -> None:
    """Even the key holder cannot rewrite history without breaking the chain."""
    ls = lines(log)
    payload = execgate.Receipt.from_json(ls[4].decode()).payload
    payload["prev"] = "0" * 64
    ls[4] = _resign(payload, key)
    log.write_bytes(b"".join(ls))
    assert execgate.Receipt.from_json(ls[4].decode()).verify(key.verify_key)
    r = verify(log, key)
    assert not r.ok and r.line == 5 and "chain break" in (r.reason or "")


@pytest.mark.parametrize(
    ("mutate", "line", "reason"),
    [
        (lambda ls: ls[:3] + ls[4:], 4, "sequence gap"),
        (lambda ls: [*ls[:3], ls[4], ls[3], *ls[5:]], 4, "sequence gap"),
        (lambda ls: [*ls[:4], ls[3], *ls[4:]], 5, "sequence goes back"),
        (lambda ls: [*ls[:-1], ls[-1][:40]], 10, "torn tail"),
        (lambda ls: [*ls[:2], b"{garbage\n", *ls[2:]], 3, "malformed JSON"),
        (lambda ls: ls[1:], 1, "does not start at a genesis record"),
    ],
    ids=["deleted", "reordered", "duplicated", "truncated", "malformed", "head-deleted"],
)
def test_structural_tampering_is_caught(log, key, mutate, line, reason) -> None:  # type: ignore[no-untyped-def]
    log.write_bytes(b"".join(mutate(lines(log))))
    r = verify(log, key)
    assert not r.ok
    assert r.line == line, (r.line, r.reason)
    assert reason in (r.reason or ""), r.reason


def test_completion_must_link_to_a_real_authorization(log: pathlib.Path, key: SigningKey) -> None:
    ls = lines(log)
    # Re-point a (validly re-signed) completion at an id that was never authorized.
    comp = next(
        i
        for i, raw in enumerate(ls)
        if execgate.Receipt.from_json(raw.decode()).kind == "completion"
    )
    payload = execgate.Receipt.from_json(ls[comp].decode()).payload
    payload["authorization"]["id"] = "never-authorized"
    ls[comp] = _resign(payload, key)
    log.write_bytes(b"".join(ls))
    r = verify(log, key)
    assert not r.ok and r.line == comp + 1
    assert "unknown authorization" in (r.reason or "")


def test_authorized_but_unfinished_calls_are_reported(
    tmp_path: pathlib.Path, key: SigningKey
) -> None:
    path = tmp_path / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        started = gate.check("ok")
        gate.check("bad")
    r = verify(path, key)
    assert r.ok and r.unfinished == [started.receipt.id]  # type: ignore[union-attr]


def test_key_rotation_needs_a_keyring(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log.jsonl"
    old, new = SigningKey.generate(), SigningKey.generate()
    write_log(path, old, 3)
    write_log(path, new, 3)
    assert not execgate.verify_log(path, old.verify_key).ok
    r = execgate.verify_log(path, [old.verify_key, new.verify_key])
    assert r.ok and sorted(r.keys) == sorted([old.kid, new.kid])
    ring = tmp_path / "keys"
    ring.mkdir()
    old.verify_key.to_pem(ring / "old.pub")
    new.verify_key.to_pem(ring / "new.pem")
    new.to_pem(ring / "private.pem")  # private keys in the directory are skipped
    assert execgate.verify_log(path, keyring=ring).ok
    r = execgate.verify_log(path, old.verify_key)
    assert r.line == 6 and "unknown key" in (r.reason or "")


def test_durability_modes_and_checkpoints(tmp_path: pathlib.Path, key: SigningKey) -> None:
    for durability in ("none", "batch", "always"):
        path = tmp_path / f"{durability}.jsonl"
        log = AuditLog(path, key, durability=durability, batch_interval=0.01)
        gate = execgate.Gate(POLICY, audit=log)
        for _ in range(20):
            gate.check("ok")
        time.sleep(0.03)
        gate.close()
        r = execgate.verify_log(path, key.verify_key)
        assert r.ok and r.records == 20, durability
    path = tmp_path / "checkpoint.jsonl"
    log = AuditLog(path, key, signing="checkpoint", checkpoint_every=7, checkpoint_interval=60)
    gate = execgate.Gate(POLICY, audit=log)
    receipts = [gate.check("ok").receipt for _ in range(20)]
    assert not any(r.signed for r in receipts if r is not None)
    with pytest.raises(execgate.SignatureError, match="unsigned"):
        receipts[0].verify(key.verify_key)  # type: ignore[union-attr]
    gate.close()
    r = execgate.verify_log(path, key.verify_key)
    assert r.ok and r.records == 20 + 3 and r.checkpoints == 3  # after 7, 14, and on close


def test_checkpoint_interval_seals_in_the_background(
    tmp_path: pathlib.Path, key: SigningKey
) -> None:
    path = tmp_path / "log.jsonl"
    log = AuditLog(
        path, key, signing="checkpoint", checkpoint_every=10_000, checkpoint_interval=0.02
    )
    gate = execgate.Gate(POLICY, audit=log)
    gate.check("ok")
    r = checkpointed(path, key, 1)
    assert r.ok and r.checkpoints == 1, (r.reason, r.checkpoints)
    gate.close()


def test_unsealed_checkpoint_tail_is_reported(tmp_path: pathlib.Path, key: SigningKey) -> None:
    path = tmp_path / "log.jsonl"
    log = AuditLog(path, key, signing="checkpoint", checkpoint_every=100, checkpoint_interval=60)
    gate = execgate.Gate(POLICY, audit=log)
    gate.check("ok")
    gate.check("ok")
    r = execgate.verify_log(path, key.verify_key)  # before close: nothing seals them yet
    assert not r.ok and r.line == 1 and "covered by no signature" in (r.reason or "")
    gate.close()
    assert execgate.verify_log(path, key.verify_key).ok


KEYFILE_WRITER = textwrap.dedent(
    """
    import sys, threading, execgate
    key = execgate.SigningKey.from_pem(sys.argv[1])
    log = execgate.AuditLog(sys.argv[2], key, signing=sys.argv[4])
    gate = execgate.Gate('package execgate\\ndecision := true\\n', audit=log, timeout=10)
    n = int(sys.argv[3])
    def work():
        for i in range(n):
            gate.check("ok", {"i": i})
    threads = [threading.Thread(target=work) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    gate.close()
    """
)


@pytest.mark.parametrize("signing", ["record", "checkpoint"])
def test_many_processes_and_threads_append_one_valid_chain(
    tmp_path: pathlib.Path, key: SigningKey, signing: str
) -> None:
    keyfile, path = tmp_path / "k.pem", tmp_path / "log.jsonl"
    key.to_pem(keyfile)
    per_thread = 1500
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                KEYFILE_WRITER,
                str(keyfile),
                str(path),
                str(per_thread),
                signing,
            ]
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    r = execgate.verify_log(path, key.verify_key)
    assert r.ok, (r.line, r.reason)
    assert r.allowed == 4 * 2 * per_thread
    assert r.records == r.allowed + r.checkpoints + r.states
    assert all(line.endswith(b"\n") for line in lines(path))


CRASHING_WRITER = textwrap.dedent(
    """
    import sys, execgate
    key = execgate.SigningKey.from_pem(sys.argv[1])
    gate = execgate.Gate('package execgate\\ndecision := true\\n', key=key, audit=sys.argv[2])
    i = 0
    while True:
        d = gate.check("ok", {"payload": "x" * 3000, "i": i})
        print(d.receipt.id, flush=True)
        i += 1
    """
)


def test_sigkill_mid_append_loses_no_completed_record(
    tmp_path: pathlib.Path, key: SigningKey
) -> None:
    keyfile, path = tmp_path / "k.pem", tmp_path / "log.jsonl"
    key.to_pem(keyfile)
    reported: list[str] = []
    for round_ in range(6):
        p = subprocess.Popen(
            [sys.executable, "-c", CRASHING_WRITER, str(keyfile), str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        first = p.stdout.readline()  # the writer is running and appending
        time.sleep(0.05 + 0.03 * round_)
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        reported += [first.strip(), *out.split()]
    # Tear the tail explicitly too, as a kill between write syscalls would.
    with open(path, "ab") as f:
        f.write(b'{"payloadType":"application/vnd.execgate.re')
    assert not execgate.verify_log(path, key.verify_key).ok
    # Opening the log recovers it; every record a writer saw returned is there.
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        gate.check("ok")
    r = execgate.verify_log(path, key.verify_key)
    assert r.ok, (r.line, r.reason)
    assert r.recoveries >= 1
    ids = {execgate.Receipt.from_json(raw.decode()).id for raw in lines(path)}
    assert set(reported) <= ids
    side_files = list(tmp_path.glob("log.jsonl.torn-*"))
    assert side_files and any(s.read_bytes().startswith(b'{"payloadType"') for s in side_files)


# A child script's start: a gate on the log at argv[2], signed with the key
# in argv[1], with the durability argv[3].
GATE_ON_LOG = textwrap.dedent(
    """
    import sys, execgate
    key = execgate.SigningKey.from_pem(sys.argv[1])
    log = execgate.AuditLog(sys.argv[2], key, durability=sys.argv[3])
    gate = execgate.Gate('package execgate\\ndecision := true\\n', audit=log)
    """
)


GUARDED_WRITER = GATE_ON_LOG + textwrap.dedent(
    """
    import os, threading
    say = lambda *words: os.write(1, (" ".join(words) + "\\n").encode())  # one write per line
    threads, calls = int(sys.argv[4]), int(sys.argv[5])

    def work(t):
        for c in range(calls):
            name = f"t{t}c{c}"
            gate.guard(action=name)(lambda: say("RAN", name))()
            say("RETURNED", name)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    gate.close()
    """
)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize(("durability", "threads"), [("always", 1), ("always", 2), ("none", 2)])
def test_sigkill_at_every_step_of_guarded_calls(
    tmp_path: pathlib.Path, key: SigningKey, durability: str, threads: int
) -> None:
    """SIGKILL (strace injects it) before each write and each fdatasync of the
    log, so at every step of guarded calls (one or two threads signing at once):
    before the decision is written, after it is written and before it is
    synced, while the tool runs, before the completion is written or synced
    (by the caller with durability="always", by the log's writer thread
    otherwise), after the call returned. Each time: the log verifies, every
    tool that ran has its decision in the log, and the calls authorized but
    never completed are exactly those the verifier reports. With
    durability="always" every call that returned has its completion on disk
    (so at most one call per thread is unfinished); otherwise a call may
    return before its completion is written, and is then reported unfinished."""
    keyfile = tmp_path / "k.pem"
    key.to_pem(keyfile)
    # strace counts each thread's calls: the kill comes at the n-th write (or
    # fdatasync) of the thread that gets there first.
    calls = 2
    records = 2 * calls  # per thread: a decision and a completion per call
    steps = [("write", n) for n in range(1, records + 2)]
    if durability == "always":
        steps += [("fdatasync", n) for n in range(1, records + 1)]
    for syscall, n in steps:
        path = tmp_path / f"{syscall}{n}.jsonl"
        out = subprocess.run(
            [
                "strace", "-f", "-qq", "-o", os.devnull, "-P", str(path),
                "-e", "trace=write,fdatasync", "-e", f"inject={syscall}:signal=KILL:when={n}",
                sys.executable, "-c", GUARDED_WRITER,
                str(keyfile), str(path), durability, str(threads), str(calls),
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        killed = out.returncode != 0
        assert killed == (n <= records) or (syscall, n) == ("write", records + 1), out.stderr
        said = [line.split() for line in out.stdout.splitlines()]
        ran = {name for what, name in said if what == "RAN"}
        returned = {name for what, name in said if what == "RETURNED"}
        report = execgate.verify_log(path, key.verify_key) if path.exists() else None
        payloads = [
            json.loads(base64.b64decode(json.loads(line)["payload"]))
            for line in (path.read_text().splitlines() if path.exists() else [])
        ]
        decided = {p["id"]: p["action"]["name"] for p in payloads if p["kind"] == "decision"}
        completed = {
            decided[p["authorization"]["id"]] for p in payloads if p["kind"] == "completion"
        }
        where = (syscall, n, out.stdout)
        assert report is None or report.ok, (where, report.reason)
        assert ran <= set(decided.values()), where
        unfinished = {decided[i] for i in (report.unfinished if report else [])}
        assert unfinished == set(decided.values()) - completed, where
        if durability == "always":
            assert returned <= completed, where
            assert len(unfinished) <= threads, where
        else:
            assert returned <= set(decided.values()), where
        if not killed:
            assert completed == {f"t{t}c{c}" for t in range(threads) for c in range(calls)}
        # A killed writer's log takes the next writer's records.
        if path.exists():
            with execgate.Gate(POLICY, key=key, audit=path) as gate:
                assert gate.check("ok").allowed
            assert execgate.verify_log(path, key.verify_key).ok, where


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_durability_always_fsyncs_before_returning(tmp_path: pathlib.Path, key: SigningKey) -> None:
    keyfile, path = tmp_path / "k.pem", tmp_path / "log.jsonl"
    key.to_pem(keyfile)
    script = GATE_ON_LOG + textwrap.dedent(
        """
        for i in range(5):
            gate.check("ok")
            print("RETURNED", flush=True)
        """
    )
    counts = {}
    for mode in ("always", "none"):
        out = subprocess.run(
            [
                "strace",
                "-f",
                "-e",
                "trace=fdatasync,fsync,write",
                "-o",
                str(tmp_path / f"{mode}.trace"),
                sys.executable,
                "-c",
                script,
                str(keyfile),
                str(path),
                mode,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        trace = (tmp_path / f"{mode}.trace").read_text()
        counts[mode] = trace.count("fdatasync(")
        if mode == "always":
            # Each record's write is followed by its fdatasync before "RETURNED" is printed.
            events = [
                e
                for e in trace.splitlines()
                if "fdatasync(" in e or "RETURNED" in e or "payloadType" in e
            ]
            order = [
                "sync" if "fdatasync(" in e else "ret" if "RETURNED" in e else "rec" for e in events
            ]
            assert order[:6] == ["rec", "sync", "ret", "rec", "sync", "ret"], order[:6]
    assert counts["always"] >= 5 and counts["none"] <= 1  # none: only the sync on close


def test_full_disk_denies_with_the_reason(tiny_fs: pathlib.Path, key: SigningKey) -> None:
    path = tiny_fs / "log.jsonl"
    gate = execgate.Gate(POLICY, key=key, audit=path)
    filler = tiny_fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    decision = gate.check("ok")
    assert not decision.allowed and decision.blocked and decision.error == "audit"
    assert "could not be recorded" in decision.reasons[0]
    assert "No space left" in decision.reasons[0] or "space" in decision.reasons[0]
    ran = []

    @gate.guard(action="ok")
    def tool() -> None:
        ran.append(1)

    with pytest.raises(execgate.ActionDenied):
        tool()
    assert ran == []
    # Nothing partial was left behind: once there is room, the chain continues.
    filler.unlink()
    assert gate.check("ok").allowed
    gate.close()
    assert execgate.verify_log(path, key.verify_key).ok


BUDGET = """
package execgate
decision := {"allow": true, "obligations": {
    "budget": {"key": "spend", "limit": 20, "cost": 1},
}}
"""


@pytest.mark.parametrize("signing", ["record", "checkpoint"])
def test_disk_full_under_threads_fails_closed(
    tiny_fs: pathlib.Path, key: SigningKey, signing: str
) -> None:
    """Threads whose records are chained and signed together while the disk
    fills: a caller whose record did not land is denied with error="audit"
    (with the records chained after it), every allowed call is in the log, the
    log verifies, and the budget the lost records took is not spent."""
    import threading

    path = tiny_fs / "log.jsonl"
    log = AuditLog(path, key, signing=signing, checkpoint_every=4)
    gate = execgate.Gate(BUDGET, audit=log)
    decisions: list[execgate.Decision] = []
    lock = threading.Lock()

    def run(calls: int, threads: int = 4) -> list[execgate.Decision]:
        got: list[execgate.Decision] = []

        def work() -> None:
            mine = [gate.check("buy", {}) for _ in range(calls)]
            with lock:
                got.extend(mine)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        decisions.extend(got)
        return got

    assert all(d.allowed for d in run(3))
    filler = tiny_fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    full = run(20)
    lost = [d for d in full if not d.allowed]
    assert len(lost) >= 70, len(lost)  # the log's last page holds a few records at most
    for d in lost:
        assert d.error == "audit" and "could not be recorded" in d.reasons[0], d.reasons
    assert path.read_bytes().endswith(b"\n")  # nothing half-written
    filler.unlink()
    after = run(5)
    granted = sum(d.allowed for d in decisions)
    # Exactly the budget: the calls denied for the full disk gave back what they took.
    assert granted == 20, granted
    for d in after:
        assert d.allowed or (d.error != "audit" and "budget" in d.reasons[0]), d.reasons
    gate.close()
    report = execgate.verify_log(path, key.verify_key)
    assert report.ok, report.reason
    assert report.allowed == granted
    records = [
        json.loads(base64.b64decode(json.loads(line)["payload"]))
        for line in path.read_text().splitlines()
    ]
    allowed_ids = {r["id"] for r in records if r.get("decision") == "allow"}
    assert allowed_ids == {d.receipt.id for d in decisions if d.allowed and d.receipt}


def test_read_only_storage_refuses_to_open(tiny_fs: pathlib.Path, key: SigningKey) -> None:
    path = tiny_fs / "log.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        assert gate.check("ok").allowed
    assert mount("-o", "remount,ro", str(tiny_fs))
    for target in (path, tiny_fs / "new.jsonl"):
        with pytest.raises(execgate.AuditLogError, match="Read-only") as info:
            execgate.Gate(POLICY, key=key, audit=target)
        assert info.value.path == str(target)
    assert execgate.verify_log(path, key.verify_key).ok  # what was recorded is intact


def test_plain_exit_seals_checkpoints_and_loses_nothing(
    tmp_path: pathlib.Path, key: SigningKey
) -> None:
    keyfile, path = tmp_path / "k.pem", tmp_path / "log.jsonl"
    key.to_pem(keyfile)
    script = textwrap.dedent(
        """
        import sys, execgate
        key = execgate.SigningKey.from_pem(sys.argv[1])
        log = execgate.AuditLog(sys.argv[2], key, signing="checkpoint", durability="batch",
                                checkpoint_every=1000, checkpoint_interval=60)
        gate = execgate.Gate('package execgate\\ndecision := true\\n', audit=log)
        for i in range(25):
            gate.check("ok")
        # no close(): the interpreter simply exits
        """
    )
    subprocess.run([sys.executable, "-c", script, str(keyfile), str(path)], check=True, timeout=60)
    r = execgate.verify_log(path, key.verify_key)
    assert r.ok, (r.line, r.reason)
    assert (r.allowed, r.checkpoints) == (25, 1)


@pytest.mark.parametrize("durability", ["batch", "none"])
def test_plain_exit_writes_every_queued_completion(
    tmp_path: pathlib.Path, key: SigningKey, durability: str
) -> None:
    """A guarded call returns before its completion record is written (unless
    durability="always"); an interpreter that simply exits still writes them
    all, in order after their decisions."""
    keyfile, path = tmp_path / "k.pem", tmp_path / "log.jsonl"
    key.to_pem(keyfile)
    script = GATE_ON_LOG + textwrap.dedent(
        """
        tool = gate.guard(action="ok")(lambda i: i)
        assert [tool(i) for i in range(300)] == list(range(300))
        # no close(): the interpreter simply exits
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, str(keyfile), str(path), durability],
        check=True,
        timeout=60,
    )
    r = execgate.verify_log(path, key.verify_key)
    assert r.ok, (r.line, r.reason)
    assert (r.allowed, r.completions, r.unfinished) == (300, 300, [])


def test_a_completion_that_cannot_be_written_fails_flush_and_the_next_call(
    tmp_path: pathlib.Path, key: SigningKey
) -> None:
    """The tool moves the log away: its completion, written after it returned,
    cannot land. Flush raises naming it; the next call is denied."""
    path = tmp_path / "log.jsonl"
    gate = execgate.Gate(POLICY, audit=AuditLog(path, key, durability="none"))

    @gate.guard(action="ok")
    def tool() -> str:
        path.rename(tmp_path / "moved.jsonl")
        return "done"

    assert tool() == "done"  # the call returns before its completion is written
    with pytest.raises(execgate.AuditLogError) as info:
        gate.flush()
    message = str(info.value)
    assert "a completion record queued earlier could not be written" in message, message
    assert "moved away" in message, message
    gate.flush()  # reported once
    decision = gate.check("ok")
    assert not decision.allowed and decision.error == "audit", decision.reasons
    with pytest.raises(execgate.ActionDenied):
        tool()
    r = execgate.verify_log(tmp_path / "moved.jsonl", key.verify_key)
    assert r.ok and r.allowed == 1 and len(r.unfinished) == 1, r.reason


# The guarded tool a fork pool's workers inherit (set by the test below).
_pool_tool = None


def _pool_task(calls: int) -> int:
    assert _pool_tool is not None
    for _ in range(calls):
        assert _pool_tool("worker") == "worker"
    return os.getpid()


@pytest.mark.parametrize("signing", ["record", "checkpoint"])
def test_a_fork_pool_writes_one_valid_chain_through_the_log_it_inherited(
    tmp_path: pathlib.Path, key: SigningKey, signing: str
) -> None:
    """`multiprocessing`'s fork workers write through their parent's log: each
    reopens the file (an inherited descriptor shares the parent's `flock`, and
    two workers chained onto one head: "seq 3 after 3"), makes ids of its own
    (a copied generator gave two workers the same ids), and closes the log as
    it exits past `atexit` (its completions written, its unsigned records
    sealed by its own checkpoint)."""
    global _pool_tool
    path = tmp_path / "log.jsonl"
    gate = execgate.Gate(POLICY, audit=AuditLog(path, key, signing=signing))
    _pool_tool = gate.guard(action="ok")(lambda who: who)
    assert _pool_tool("parent") == "parent"
    gate.flush()
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        # A worker that dies would leave map() waiting forever.
        pool.map_async(_pool_task, [300] * 4, chunksize=1).get(timeout=120)
    finally:
        pool.close()  # the workers exit on their own (terminate() would kill them)
        deadline = time.monotonic() + 60
        while multiprocessing.active_children() and time.monotonic() < deadline:
            time.sleep(0.05)
        stuck = multiprocessing.active_children()
        if stuck:
            pool.terminate()
        pool.join()
        _pool_tool = None
    assert not stuck, f"pool workers hung on the log at exit: {stuck}"
    gate.close()
    r = verify(path, key)
    assert r.ok, (r.line, r.reason)
    assert (r.allowed, r.completions, r.unfinished) == (1201, 1201, [])


def test_a_forked_child_writes_its_own_completions(tmp_path: pathlib.Path, key: SigningKey) -> None:
    """After a fork the log's writer thread is the parent's alone: the child's
    completions are written by a thread of its own, its flushes and close do
    not wait for the parent's thread (nor wake it: with `parking_lot`'s locks
    the parent's sleeping writer thread stayed in the child's wait queues and
    the child hung at once), and the parent goes on after it."""
    path = tmp_path / "log.jsonl"
    gate = execgate.Gate(POLICY, audit=AuditLog(path, key))
    tool = gate.guard(action="ok")(lambda who: who)
    assert tool("parent") == "parent"
    gate.flush()
    time.sleep(0.2)  # the writer thread sleeps (holding no lock) at the fork
    calls = 100
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            for i in range(calls):
                assert tool("child") == "child"
                if i % 2:
                    gate.flush()
                time.sleep(0.0005 * (i % 5))  # the child's writer busy, then idle
            gate.close()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the log")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert tool("parent again") == "parent again"
    gate.close()
    r = verify(path, key)
    assert r.ok, (r.line, r.reason)
    assert (r.allowed, r.completions, r.unfinished) == (calls + 2, calls + 2, [])


def test_a_forked_child_refuses_a_log_replaced_since_the_fork(
    tmp_path: pathlib.Path, key: SigningKey
) -> None:
    """A child reopens the log by its path: if the path now names another
    file (the log moved away and a file put in its place), the child writes
    nothing there and denies, saying why; the moved log stays valid."""
    path = tmp_path / "log.jsonl"
    gate = execgate.Gate(POLICY, audit=AuditLog(path, key))
    assert gate.check("ok").allowed
    gate.flush()
    path.rename(tmp_path / "moved.jsonl")
    path.write_bytes(b"")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        d = gate.check("ok")
        os.write(write, json.dumps([d.allowed, d.error, d.reasons]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        allowed, error, reasons = json.loads(f.read())
    os.waitpid(pid, 0)
    assert not allowed and error == "audit", reasons
    assert "could not reopen the log it inherited" in reasons[0], reasons
    assert "another file" in reasons[0], reasons
    assert path.read_bytes() == b""
    gate.close()
    r = verify(tmp_path / "moved.jsonl", key)
    assert r.ok and r.records == 1, (r.reason, r.records)


def test_a_forked_child_seals_its_records_in_time(tmp_path: pathlib.Path, key: SigningKey) -> None:
    """The log's ticker thread is the parent's: a long-lived forked worker
    (a pre-forking server's) starts its own on its first write, so its
    checkpoint-mode records are sealed within the interval, not only when it
    closes. The child here never closes: it is killed once it has waited."""
    path = tmp_path / "log.jsonl"
    log = AuditLog(
        path, key, signing="checkpoint", checkpoint_every=10_000, checkpoint_interval=0.05
    )
    gate = execgate.Gate(POLICY, audit=log)
    gate.check("ok")
    assert checkpointed(path, key, 1).checkpoints == 1  # the parent's record, by the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        for _ in range(3):
            gate.check("ok")
        os.write(write, b"x")
        time.sleep(60)
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"x"
        r = checkpointed(path, key, 2)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
    assert r.ok, (r.line, r.reason)
    assert (r.records, r.checkpoints) == (6, 2)  # 4 decisions, the parent's and the child's seal
    gate.close()
