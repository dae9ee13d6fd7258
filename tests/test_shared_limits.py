"""Local processes sharing one audit log share its limits (issue 16): no Redis,
exactly the budget is granted however the processes interleave."""

from __future__ import annotations

import base64
import json
import multiprocessing
import pathlib

import pytest

import execgate

BUDGET = """
package execgate
decision := {"allow": true, "obligations": {
    "budget": {"key": "spend:team", "limit": 3, "cost": 1},
}}
"""

RATE = """
package execgate
decision := {"allow": true, "obligations": {
    "rate": {"key": "calls:team", "limit": 5, "window_seconds": 3600},
}}
"""


def _worker(policy: str, log: str, key: str, calls: int, start: object, out: object) -> None:
    gate = execgate.Gate(policy, key=key, audit=log)
    start.wait()  # type: ignore[attr-defined]  # every process has opened the log: they race
    granted = sum(gate.check("buy", {}).allowed for _ in range(calls))
    gate.close()
    out.put(granted)  # type: ignore[attr-defined]


def _race(tmp_path: pathlib.Path, policy: str, processes: int, calls: int) -> int:
    key = tmp_path / "k.pem"
    execgate.SigningKey.generate().to_pem(key)
    log = tmp_path / "audit.jsonl"
    execgate.Gate(policy, key=key, audit=log).close()  # the log exists before the race
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(policy, str(log), str(key), calls, start, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    pub = execgate.SigningKey.from_pem(key).verify_key
    assert execgate._core.verify(str(log), [pub]).ok
    payloads = [
        json.loads(base64.b64decode(json.loads(line)["payload"]))
        for line in log.read_text().splitlines()
    ]
    decisions = [p for p in payloads if p.get("kind") == "decision"]
    assert len(decisions) == processes * calls  # every call is recorded, granted or not
    allowed = [p for p in decisions if p["decision"] == "allow"]
    assert len(allowed) == total  # the log holds exactly what was granted
    refused = [p for p in decisions if p["decision"] == "deny"]
    assert all("limit" in p["reasons"][0] or "budget" in p["reasons"][0] for p in refused)
    return total


@pytest.mark.parametrize("run", range(3))
def test_four_processes_on_one_log_get_exactly_the_budget(tmp_path: pathlib.Path, run: int) -> None:
    assert _race(tmp_path, BUDGET, processes=4, calls=6) == 3


def test_four_processes_on_one_log_get_exactly_the_rate(tmp_path: pathlib.Path) -> None:
    assert _race(tmp_path, RATE, processes=4, calls=4) == 5
