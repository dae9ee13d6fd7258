"""Stateful policies: history, rate and budget obligations, restarts."""

from __future__ import annotations

import pathlib
import threading
from importlib import resources

import pytest

import execgate

RATE_AND_BUDGET = """
package execgate
decision := {"allow": true, "obligations": {
    "rate": {"key": sprintf("calls:%v", [input.principal.id]), "limit": 100, "window_seconds": 3600},
    "budget": {"key": sprintf("spend:%v", [input.principal.id]), "limit": 50, "cost": input.action.args.cost},
}}
"""


def test_history_and_usage_are_in_the_input() -> None:
    reads_history = "package execgate\ndecision := count(input.history) >= 0\n"
    gate = execgate.Gate(reads_history, history=2)
    with execgate.context(session="s-1"):
        for name in ("a", "b", "c"):
            gate.check(name, {"x": 1})
        d = gate.check("d")
    assert [h["action"] for h in d.input["history"]] == ["b", "c"]  # bounded
    assert (
        d.input["history"][0]["decision"] == "allow"
        and len(d.input["history"][0]["args_sha256"]) == 64
    )
    assert d.input["usage"]["session_calls"] == 3
    with execgate.context(session="s-2"):
        assert gate.check("e").input["history"] == []  # sessions are separate


def test_sequence_rule_denies_the_forbidden_order_and_allows_the_safe_one() -> None:
    policy = resources.files("execgate") / "examples" / "no_exfiltration.rego"
    gate = execgate.Gate(pathlib.Path(str(policy)), history=32)
    with execgate.context(session="safe"):
        assert gate.check("http.post", {"url": "https://x"}).allowed
        assert gate.check("secrets.read", {"name": "db"}).allowed
    with execgate.context(session="risky"):
        assert gate.check("secrets.read", {"name": "db"}).allowed
        d = gate.check("http.post", {"url": "https://x"})
        assert not d.allowed and d.reasons == (
            "no http.post after secrets.read in the same session",
        )


def test_racing_threads_get_exactly_the_limit() -> None:
    gate = execgate.Gate(RATE_AND_BUDGET)
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(40):
            d = gate.check("call", {"cost": 0}, principal={"id": "p"})
            with lock:
                results.append(d.allowed)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 100 and len(results) == 320
    denied = gate.check("call", {"cost": 0}, principal={"id": "p"})
    assert (
        denied.error == "obligation" and "rate limit: calls:p allows 100 calls" in denied.reasons[0]
    )
    assert gate.check("call", {"cost": 0}, principal={"id": "other"}).allowed  # keys are separate


def test_budget_cannot_be_overspent_concurrently() -> None:
    gate = execgate.Gate(RATE_AND_BUDGET)
    with_usage = execgate.Gate(RATE_AND_BUDGET + "_spent := input.usage\n")
    with_usage.check("buy", {"cost": 1}, principal={"id": "u"})
    # usage is what was spent before this call
    second = with_usage.check("buy", {"cost": 1}, principal={"id": "u"})
    assert second.input["usage"]["budgets"] == {"spend:u": 1}
    granted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            if gate.check("buy", {"cost": 3}, principal={"id": "q"}).allowed:
                with lock:
                    granted.append(3)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 48  # 16 purchases of 3 fit in 50; the 17th would make 51
    d = gate.check("buy", {"cost": 3}, principal={"id": "q"})
    assert "budget exceeded: spend:q has spent 48 of 50" in d.reasons[0]
    assert "usage" not in d.input  # a policy that does not read them gets neither


def test_a_restart_keeps_the_counts(tmp_path: pathlib.Path) -> None:
    key = execgate.SigningKey.generate()
    log = tmp_path / "audit.jsonl"
    with execgate.Gate(RATE_AND_BUDGET, key=key, audit=log) as gate:
        assert gate.check("buy", {"cost": 30}, principal={"id": "r"}).allowed
        assert not gate.check("buy", {"cost": 30}, principal={"id": "r"}).allowed
    with execgate.Gate(RATE_AND_BUDGET, key=key, audit=log) as again:
        d = again.check("buy", {"cost": 30}, principal={"id": "r"})
        assert not d.allowed and "has spent 30 of 50" in d.reasons[0]
        assert again.check("buy", {"cost": 20}, principal={"id": "r"}).allowed
    assert execgate.verify_log(log, key.verify_key).ok


@pytest.mark.parametrize(
    "obligation",
    [
        '{"key": "k", "limit": "many", "window_seconds": 1}',
        '{"limit": 1, "window_seconds": 1}',
        "7",
    ],
)
def test_malformed_limits_deny(obligation: str) -> None:
    gate = execgate.Gate(
        f'package execgate\ndecision := {{"allow": true, "obligations": {{"rate": {obligation}}}}}\n'
    )
    d = gate.check("x")
    assert not d.allowed and d.error == "obligation" and "obligations.rate" in d.reasons[0]
