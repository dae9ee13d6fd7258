"""Human approval: fail closed without an approver; yes, no and timeout recorded."""

from __future__ import annotations

import asyncio
import pathlib
import time

import pytest

import execgate
from execgate import Approval, ApprovalRequest

POLICY = """
package execgate
decision := {"allow": true, "obligations": {"approval": {"reason": "deleting data", "approvers": ["role:dba"]}}} if {
    input.action.name == "db.delete"
}
decision := {"allow": true} if input.action.name != "db.delete"
"""


def _gate(tmp_path: pathlib.Path, **kw) -> tuple[execgate.Gate, execgate.SigningKey]:  # type: ignore[no-untyped-def]
    key = execgate.SigningKey.generate()
    return execgate.Gate(POLICY, key=key, audit=tmp_path / "audit.jsonl", **kw), key


def test_without_an_approver_the_call_fails_closed(tmp_path: pathlib.Path) -> None:
    gate, _ = _gate(tmp_path)
    ran: list[str] = []

    @gate.guard(action="db.delete")
    def delete(table: str) -> None:
        ran.append(table)

    with pytest.raises(execgate.ApprovalRequired) as info:
        delete("users")
    request = info.value.request
    assert (request.action, request.reason, request.approvers) == (
        "db.delete",
        "deleting data",
        ("role:dba",),
    )
    assert request.args == {"table": "users"} and ran == []
    assert (
        gate.check("db.delete", {"table": "users"}).obligations["approval"]["reason"]
        == "deleting data"
    )
    gate.enforce("db.read")  # no approval needed elsewhere
    gate.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_approver_yes_and_no_are_recorded_and_linked(tmp_path: pathlib.Path, kind: str) -> None:
    seen: list[ApprovalRequest] = []

    def decide(request: ApprovalRequest) -> Approval:
        seen.append(request)
        ok = request.args["table"] == "tmp"
        return Approval(ok, approver="alice@example.com", comment=None if ok else "not users")

    async def adecide(request: ApprovalRequest) -> Approval:
        await asyncio.sleep(0)
        return decide(request)

    gate, key = _gate(tmp_path, approver=decide if kind == "sync" else adecide)
    ran: list[str] = []

    @gate.guard(action="db.delete")
    def delete(table: str) -> str:
        ran.append(table)
        return "deleted"

    assert delete("tmp") == "deleted"
    with pytest.raises(execgate.ActionDenied) as info:
        delete("users")
    assert info.value.reasons == ("approval refused by alice@example.com: not users",)
    # The approver is asked before the decision is recorded: the answer is
    # part of the signed decision record, so a refused call spends no limit.
    assert ran == ["tmp"] and len(seen) == 2 and seen[0].receipt_id is None
    gate.close()
    report = execgate.verify_log(tmp_path / "audit.jsonl", key.verify_key)
    assert report.ok, (report.line, report.reason)
    assert (report.completions, report.unfinished) == (1, [])
    records = [
        execgate.Receipt.from_json(line)
        for line in (tmp_path / "audit.jsonl").read_text().splitlines()
    ]
    decisions = [r for r in records if r.kind == "decision"]
    assert [d.payload["decision"] for d in decisions] == ["allow", "deny"]
    answers = [d.payload["approval"] for d in decisions]
    assert [a["approved"] for a in answers] == [True, False]
    assert answers[1]["comment"] == "not users" and decisions[1].payload["error"] == "approval"
    assert all(d.verify(key.verify_key) for d in decisions)


def test_no_answer_in_time_is_a_denial(tmp_path: pathlib.Path) -> None:
    def slow(request: ApprovalRequest) -> bool:
        time.sleep(5)
        return True

    gate, key = _gate(tmp_path, approver=slow, approval_timeout=0.2)
    start = time.monotonic()
    with pytest.raises(execgate.ActionDenied, match=r"approval timed out after 0\.2 s"):
        gate.enforce("db.delete", {"table": "users"})
    assert time.monotonic() - start < 3
    gate.close()
    records = [
        execgate.Receipt.from_json(line)
        for line in (tmp_path / "audit.jsonl").read_text().splitlines()
    ]
    timed_out = next(r for r in records if r.kind == "decision").payload["approval"]
    assert timed_out == {
        "approved": False,
        "approver": "",
        "comment": "after 0.2 s",
        "timed_out": True,
    }
    assert execgate.verify_log(tmp_path / "audit.jsonl", key.verify_key).unfinished == []


def test_an_approver_that_fails_refuses(tmp_path: pathlib.Path) -> None:
    def broken(request: ApprovalRequest) -> bool:
        raise RuntimeError("pager down")

    gate, _ = _gate(tmp_path, approver=broken)
    with pytest.raises(execgate.ActionDenied, match="pager down"):
        gate.enforce("db.delete", {"table": "x"})
    gate.close()
