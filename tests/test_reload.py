"""reload(): atomic swap under concurrent load; failed reloads keep the old policy."""

from __future__ import annotations

import pathlib
import threading

import pytest

import execgate

V1 = 'package execgate\ndecision := {"allow": true, "reasons": ["v1"]}\n'
V2 = 'package execgate\ndecision := {"allow": false, "reasons": ["v2"]}\n'


def test_reload_from_disk_and_with_new_policy(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "p.rego"
    f.write_text(V1)
    gate = execgate.Gate.from_path(f)
    before = gate.policy_digest
    assert gate.check("x").reasons == ("v1",)
    f.write_text(V2)
    assert gate.check("x").reasons == ("v1",)  # nothing changes until reload
    digest = gate.reload()
    assert digest == gate.policy_digest != before
    assert gate.check("x").reasons == ("v2",)
    gate.reload(V1)
    assert gate.check("x").reasons == ("v1",)


def test_failed_reload_keeps_old_policy(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "p.rego"
    f.write_text(V1)
    gate = execgate.Gate(f)
    digest = gate.policy_digest
    f.write_text("package execgate\ndecision := {\n")
    with pytest.raises(execgate.PolicyError):
        gate.reload()
    f.unlink()
    with pytest.raises(execgate.PolicyError, match="cannot read"):
        gate.reload()
    assert gate.policy_digest == digest
    assert gate.check("x").allowed


def test_reload_under_concurrent_load_never_tears() -> None:
    gate = execgate.Gate(V1, timeout=10)  # a loaded machine must not turn checks into limit denies
    digests = {execgate.Gate(V1).policy_digest: "v1", execgate.Gate(V2).policy_digest: "v2"}
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"v1": 0, "v2": 0}
    lock = threading.Lock()

    def checker() -> None:
        try:
            while not stop.is_set():
                d = gate.check("x")
                # Every decision is wholly one policy: its reason matches its digest.
                (reason,) = d.reasons
                assert digests[d.policy_digest] == reason
                assert d.allowed == (reason == "v1")
                assert d.error is None
                with lock:
                    counts[reason] += 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=checker) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(200):
        gate.reload(V2 if i % 2 == 0 else V1)
        if i % 10 == 0:
            with pytest.raises(execgate.PolicyError):
                gate.reload("package execgate\ndecision := \n")
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert counts["v1"] > 0 and counts["v2"] > 0
