"""State snapshots in the audit log: a gate reopens from the last signed
``state`` record, budgets and windows carry across restarts and torn
snapshots, and the log still verifies."""

from __future__ import annotations

import base64
import json
import pathlib

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
