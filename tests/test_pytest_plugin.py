"""The pytest plugin, tested with pytester in throwaway projects."""

from __future__ import annotations

import pytest

import execgate
from execgate.testing import assert_allowed, assert_denied

pytest_plugins = ["pytester"]

POLICY = """package execgate
default decision := {"allow": false, "reasons": ["only reads"]}
decision := {"allow": true} if input.action.name == "fs.read"
"""


def test_fixtures_receipts_and_helpers(pytester: pytest.Pytester) -> None:
    pytester.makefile(".rego", policy=POLICY)
    pytester.makepyfile(
        """
        import pytest
        from execgate.testing import assert_allowed, assert_denied

        @pytest.mark.execgate(policy="policy.rego")
        def test_gate(execgate_gate, execgate_receipts, execgate_key):
            assert_allowed(execgate_gate, "fs.read", {"path": "/a"})
            assert_denied(execgate_gate, "fs.write", reason="only reads")
            assert [r.payload["decision"] for r in execgate_receipts] == ["allow", "deny"]
            assert all(r.verify(execgate_key.verify_key) for r in execgate_receipts)

        @pytest.mark.execgate(policy="policy.rego")
        def test_broken_chain_fails_at_teardown(execgate_gate, execgate_log):
            execgate_gate.check("fs.read")
            execgate_gate.check("fs.read")
            execgate_gate.close()
            lines = execgate_log.read_text().splitlines(keepends=True)
            execgate_log.write_text(lines[1])
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*does not verify: line 1: the log does not start at a genesis*"])


def test_ini_options_configure_the_gate(pytester: pytest.Pytester) -> None:
    pytester.makefile(".rego", policy=POLICY)
    pytester.makeini("[pytest]\nexecgate_policy = policy.rego\n")
    pytester.makepyfile(
        "def test_it(execgate_gate):\n    assert execgate_gate.check('fs.read').allowed\n"
    )
    pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio").assert_outcomes(passed=1)


def test_rego_unit_tests_are_collected_one_item_per_rule(pytester: pytest.Pytester) -> None:
    pytester.makefile(".rego", policy=POLICY)
    pytester.makefile(
        ".rego",
        policy_test="""package execgate
test_reads_allowed if decision.allow with input as {"action": {"name": "fs.read"}}
test_writes_allowed if decision.allow with input as {"action": {"name": "fs.write"}}
test_broken if 1 / 0
""",
    )
    result = pytester.runpytest("-v", "-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*policy_test.rego::test_reads_allowed PASSED*",
            "*Rego test data.execgate.test_writes_allowed failed: data.execgate.test_writes_allowed is undefined*",
        ]
    )


def test_assertion_messages_show_input_and_reasons() -> None:
    gate = execgate.Gate(POLICY)
    with pytest.raises(AssertionError) as info:
        assert_allowed(gate, "fs.write", {"path": "/x"}, principal={"id": "bob"})
    text = str(info.value)
    assert "expected fs.write to be allowed" in text and "only reads" in text and '"bob"' in text
    with pytest.raises(AssertionError, match="no reason contains 'nope'"):
        assert_denied(gate, "fs.write", reason="nope")
    with pytest.raises(AssertionError, match="to be denied"):
        assert_denied(gate.check("fs.read"))
