"""State snapshots in the audit log: a gate reopens from the last signed
``state`` record, budgets and windows carry across restarts and torn
snapshots, and the log still verifies."""

from __future__ import annotations

import base64
import json
import pathlib
import sys

import execgate

POLICY = """
package execgate
decision := {"allow": true, "obligations": {
    "rate": {"key": sprintf("calls:%v", [input.principal.id]), "limit": 1000, "window_seconds": 3600},
    "budget": {"key": sprintf("spend:%v", [input.principal.id]), "limit": 100, "cost": input.action.args.cost},
}}
"""


def kinds(path: pathlib.Path) -> list[str]:
    out = []
    for line in path.read_bytes().splitlines():
        payload = json.loads(base64.b64decode(json.loads(line)["payload"]))
        out.append(payload["kind"])
    return out


def gate(path: pathlib.Path, key: execgate.SigningKey) -> execgate.Gate:
    return execgate.Gate(POLICY, audit=execgate.AuditLog(path, key, state_every=5))


def spend(g: execgate.Gate, cost: int, who: str = "p") -> bool:
    return g.check("buy", {"cost": cost}, principal={"id": who}).allowed


def test_budget_holds_across_restarts_with_snapshots(tmp_path: pathlib.Path) -> None:
    key, path = execgate.SigningKey.generate(), tmp_path / "audit.jsonl"
    for _ in range(4):
        with gate(path, key) as g:
            for _ in range(6):
                assert spend(g, 3)
    # 24 calls, 72 spent: state records were written, and restarts used them.
    assert kinds(path).count("state") >= 4
    with gate(path, key) as g:
        d = g.check("buy", {"cost": 29}, principal={"id": "p"})
        assert not d.allowed and "has spent 72 of 100" in d.reasons[0]
        assert spend(g, 28)
        assert not spend(g, 1)
        assert spend(g, 50, who="other")  # keys stay separate
    r = execgate.verify_log(path, key.verify_key)
    assert r.ok, r.reason
    assert r.states == kinds(path).count("state") and r.states > 0


def test_a_torn_snapshot_is_a_torn_tail_and_resets_nothing(tmp_path: pathlib.Path) -> None:
    key, path = execgate.SigningKey.generate(), tmp_path / "audit.jsonl"
    with gate(path, key) as g:
        for _ in range(5):
            assert spend(g, 10)  # the 5th decision is followed by a state record
    lines = path.read_bytes().splitlines(keepends=True)
    assert kinds(path)[-1] == "state"
    # A crash halfway through writing the snapshot.
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    with gate(path, key) as g:
        d = g.check("buy", {"cost": 51}, principal={"id": "p"})
        assert not d.allowed and "has spent 50 of 100" in d.reasons[0]
    r = execgate.verify_log(path, key.verify_key)
    assert r.ok and r.recoveries == 1, r.reason


def test_a_symlink_at_the_log_path_is_not_followed(tmp_path: pathlib.Path) -> None:
    key = execgate.SigningKey.generate()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / "audit.jsonl").symlink_to(target)
    try:
        gate(tmp_path / "audit.jsonl", key)
    except execgate.AuditLogError as e:
        assert "symbolic link" in str(e)
    else:
        raise AssertionError("a symlinked log was opened")


def test_rotated_log_verifies_as_one_chain(tmp_path: pathlib.Path) -> None:
    import shutil
    import subprocess

    from execgate.verify import verify_logs

    key, path = execgate.SigningKey.generate(), tmp_path / "logs" / "audit.jsonl"
    path.parent.mkdir()
    log = execgate.AuditLog(path, key, state_every=5)
    with execgate.Gate(POLICY, audit=log) as g:
        for _ in range(4):
            assert spend(g, 5)
        archived = log.rotate()
        for _ in range(4):
            assert spend(g, 5)
    assert pathlib.Path(archived).exists() and kinds(path)[0] == "rotation"
    with gate(path, key) as g:  # the new file alone carries the budget
        d = g.check("buy", {"cost": 61}, principal={"id": "p"})
        assert not d.allowed and "has spent 40 of 100" in d.reasons[0]
    r = verify_logs(path.parent, key.verify_key)
    assert r.ok and r.rotations == 1 and r.allowed == 8, r.reason
    pub = tmp_path / "k.pub"
    key.verify_key.to_pem(pub)
    exe = shutil.which("execgate") or str(pathlib.Path(sys.executable).parent / "execgate")
    cli = [exe, "verify"]
    out = subprocess.run(
        [*cli, str(path.parent), "--key", str(pub)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "VALID" in out.stdout, out.stdout + out.stderr
    # The later file alone is not the whole log: not VALID, and it says what is missing.
    out = subprocess.run([*cli, str(path), "--key", str(pub)], capture_output=True, text=True)
    assert out.returncode == 1 and "VALID:" not in out.stdout, out.stdout
    assert "does not start at a genesis record" in out.stdout, out.stdout
    assert pathlib.Path(archived).name in out.stdout, out.stdout
    # Named explicitly: from the digest the archive ends with.
    head = verify_logs([archived], key.verify_key).head
    assert head is not None
    out = subprocess.run(
        [*cli, str(path), "--key", str(pub), "--after", head], capture_output=True, text=True
    )
    assert out.returncode == 0 and "VALID" in out.stdout, out.stdout
    wrong = subprocess.run(
        [*cli, str(path), "--key", str(pub), "--after", "0" * 64], capture_output=True, text=True
    )
    assert wrong.returncode == 1 and "does not continue from" in wrong.stdout, wrong.stdout
    # Rows in PostgreSQL always start at genesis: --after does not apply there.
    rows = subprocess.run(
        [*cli, "--postgres", "host=/nonexistent", "--key", str(pub), "--after", head],
        capture_output=True,
        text=True,
    )
    assert rows.returncode == 2 and "--after D] or --postgres" in rows.stderr, rows.stderr


def test_rotated_set_missing_its_first_file_is_not_valid(tmp_path: pathlib.Path) -> None:
    from execgate.verify import verify_logs

    key, path = execgate.SigningKey.generate(), tmp_path / "logs" / "audit.jsonl"
    path.parent.mkdir()
    log = execgate.AuditLog(path, key)
    with execgate.Gate(POLICY, audit=log) as g:
        archives = []
        for _ in range(3):
            assert spend(g, 1)
            archives.append(pathlib.Path(log.rotate()))
        assert spend(g, 1)
    assert verify_logs(path.parent, key.verify_key).ok
    archives[0].unlink()  # the first file of the set is gone
    r = verify_logs(path.parent, key.verify_key)
    assert not r.ok and r.line == 1, r.reason
    assert "does not start at a genesis record" in (r.reason or "")
    assert archives[0].name in (r.reason or "")  # names the missing file
