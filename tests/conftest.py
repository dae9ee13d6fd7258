from __future__ import annotations

import datetime as dt

import pytest

import execgate

ALLOW_READS = """
package execgate

default decision := {"allow": false, "reasons": ["no rule allows this"]}

decision := {"allow": true, "reasons": ["reads under /workspace are fine"], "obligations": {"annotations": {"tags": ["email"]}}} if {
    input.action.name == "fs.read"
    startswith(input.action.args.path, "/workspace/")
}
"""


@pytest.fixture
def gate() -> execgate.Gate:
    return execgate.Gate(ALLOW_READS)


@pytest.fixture
def example_gate() -> execgate.Gate:
    from execgate.demo import example_gate

    return example_gate(clock=lambda: dt.datetime(2026, 3, 14, 10, 22, 33, tzinfo=dt.timezone.utc))
