"""Property tests: whatever a policy puts in its obligations, and whatever
options a caller passes, the gate never panics and never allows a call whose
obligations it does not understand."""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

import execgate
from execgate import Limits, Sandbox

KNOWN = {"approval", "rate", "budget", "redact", "sandbox", "args", "annotations"}

# A policy that returns whatever obligations the test hands it as data.
GATE = execgate.Gate(
    'package execgate\ndecision := {"allow": true, "obligations": input.action.args.ob}\n'
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(sorted(KNOWN)) | st.text(min_size=1, max_size=12)
documents = st.dictionaries(keys, json_values, max_size=4)

# Well-formed obligations, each with a way to break it.
VALID: dict[str, Any] = {
    "approval": {"reason": "r", "approvers": ["a"]},
    "rate": {"key": "k", "limit": 5, "window_seconds": 60},
    "budget": {"key": "b", "limit": 10, "cost": 1},
    "redact": {"args": {"transform": "mask", "detectors": ["email"]}, "output": True},
    "sandbox": {"limits": {"wall_seconds": 5}, "network": "none"},
    "args": {"x": 1},
}
BREAKS: dict[str, list[Any]] = {
    "approval": ["yes", 1, [], {"reason": 3}, {"approvers": [1]}, {"when": "now"}],
    "rate": [
        {"key": "k", "limit": -1, "window_seconds": 60},
        {"key": "k", "limit": 1.5, "window_seconds": 60},
        {"key": "k", "limit": 1, "window_seconds": 0},
        {"key": "k", "limit": 1, "window_seconds": 1e300},
        {"key": "", "limit": 1, "window_seconds": 1},
        {"key": "k", "limit": 1, "window_seconds": 1, "burst": 2},
        [{"key": "k", "limit": 1, "window_seconds": 1}, "x"],
        "fast",
    ],
    "budget": [
        {"key": "b", "limit": 1e300, "cost": 1},
        {"key": "b", "limit": 1, "cost": -1},
        {"key": "b", "limit": 1},
        {"key": 7, "limit": 1, "cost": 1},
    ],
    "redact": [
        ["args"],
        {"args": {"transform": "shred"}},
        {"args": {"detectors": ["dna"]}},
        {"args": {"paths": "x", "extra": 1}},
        {"inputs": True},
        {"output": {"paths": ["x"]}},
    ],
    "sandbox": [
        {"limits": {"wall_seconds": 1e300}},
        {"limits": {"gpus": 1}},
        {"network": "wifi"},
        {"network": [70000]},
        {"read": "/etc"},
        "tight",
    ],
    "args": [["x"], "x", 3],
}


def _decide(ob: Any) -> execgate.Decision:
    return GATE.check("tool", {"ob": ob}, context={"purpose": "property"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_arbitrary_obligations_never_panic_and_unknown_keys_never_allow(ob: dict[str, Any]) -> None:
    decision = _decide(ob)
    if decision.allowed:
        assert set(ob) <= KNOWN, (ob, decision.reasons)
    elif decision.error == "approval":  # well-formed, and nobody approved it
        assert set(ob) <= KNOWN and "approval" in ob, (ob, decision.reasons)
    else:
        assert decision.error == "obligation", (ob, decision.error, decision.reasons)
        assert decision.reasons and decision.reasons[0]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(BREAKS)).flatmap(
        lambda kind: st.tuples(st.just(kind), st.sampled_from(BREAKS[kind]))
    ),
    st.dictionaries(st.sampled_from(sorted(VALID)), st.just(None), max_size=3),
)
def test_one_malformed_obligation_denies_whatever_else_is_valid(
    broken: tuple[str, Any], others: dict[str, None]
) -> None:
    kind, bad = broken
    ob = {k: VALID[k] for k in others if k != kind}
    ob[kind] = bad
    decision = _decide(ob)
    assert not decision.allowed and decision.error == "obligation", (ob, decision.reasons)
    assert kind in decision.reasons[0] or "obligations" in decision.reasons[0]


def test_every_valid_obligation_alone_is_understood() -> None:
    for kind, value in VALID.items():
        decision = execgate.Gate(
            'package execgate\ndecision := {"allow": true, "obligations": data.ob}\n',
            data={"ob": {kind: value}},
            approver=lambda request: True,
        ).check("tool")
        # check() leaves sandbox, redaction and rewrites to its caller: allowed.
        assert decision.allowed, (kind, decision.reasons)


durations = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)


@settings(max_examples=150, deadline=None)
@given(durations)
def test_duration_options_are_accepted_or_refused_but_never_panic(value: float) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and 0 < value < 1e15
    for build in (
        lambda: execgate.Gate("package execgate\ndecision := true\n", timeout=value),
        lambda: execgate.AuditLog(
            None, execgate.SigningKey.generate(), durability="batch", batch_interval=value
        ),
    ):
        try:
            build()
        except (execgate.ConfigurationError, OverflowError, TypeError):
            assert not ok or value > 1e9 or value < 1e-9, value
        else:
            assert value > 0, value


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_sandbox_wall_values_never_panic(value: float) -> None:
    box = Sandbox(limits=Limits(wall=value))
    try:
        box.run(["/bin/true"])
    except execgate.ConfigurationError:
        assert not (math.isfinite(value) and 1e-9 <= value < 1e15), value


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-(2**80), max_value=2**80))
def test_instruction_and_history_bounds_never_panic(n: int) -> None:
    for options in ({"max_instructions": n}, {"history": n}, {"max_memory": n}):
        try:
            execgate.Gate("package execgate\ndecision := true\n", **options)
        except (execgate.ExecgateError, OverflowError, TypeError):
            pass
