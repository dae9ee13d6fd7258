"""OpenTelemetry: spans and metrics from the pipeline (issue 16).

Each scenario runs in a fresh interpreter: OpenTelemetry's global providers can
be set once per process, and "nothing is imported" can only be checked in a
process that has not imported it yet. The SDK's in-memory span exporter and
in-memory metric reader capture what execgate reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")


def _child(code: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


SDK = """
import json, sys
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(provider)
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

def span_dicts():
    return [
        {
            "name": s.name,
            "kind": s.kind.name,
            "attributes": dict(s.attributes),
            "status": s.status.status_code.name,
            "parent": s.parent.span_id if s.parent else None,
            "id": s.context.span_id,
            "start": s.start_time,
            "end": s.end_time,
        }
        for s in spans.get_finished_spans()
    ]

def metric_dicts():
    out = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            if sm.scope.name != "execgate":
                continue
            for m in sm.metrics:
                points = []
                for p in m.data.data_points:
                    value = getattr(p, "value", None)
                    if value is None:
                        value = {"count": p.count, "sum": p.sum}
                    points.append({"attributes": dict(p.attributes), "value": value})
                out[m.name] = {"unit": m.unit, "points": points}
    return out
"""

POLICY = """
package execgate
import rego.v1
default decision := {"allow": false, "reasons": ["writes are off for ann@example.com"]}
decision := {"allow": true} if input.action.name == "fs.read"
"""


def test_spans_and_metrics_follow_the_genai_conventions() -> None:
    out = _child(
        SDK
        + f"""
import execgate
from execgate import telemetry

gate = execgate.Gate({POLICY!r}, key=execgate.SigningKey.generate())

@gate.guard(action="fs.read")
def read(path):
    return "contents"

@gate.guard(action="fs.read")
def broken(path):
    raise OSError("disk")

tracer = trace.get_tracer("agent")
with tracer.start_as_current_span("invoke_agent") as agent:
    with execgate.context(tool_call_id="call_42"):
        assert read("/etc/motd") == "contents"
    try:
        broken("/x")
    except OSError:
        pass
    denied = gate.check("fs.write")
allowed_receipt = gate.check("fs.read").receipt.id
lags_before = metric_dicts().get("execgate.audit.shipping.lag")
telemetry.report_shipping_lag("log-1", 2.5)
result = {{
    "spans": span_dicts(),
    "metrics": metric_dicts(),
    "lags_before": lags_before,
    "agent": agent.get_span_context().span_id,
    "denied_receipt": denied.receipt.id,
    "digest": gate.policy_digest,
}}
telemetry.report_shipping_lag("log-1", None)
result["lags_after"] = metric_dicts().get("execgate.audit.shipping.lag")
print(json.dumps(result))
"""
    )
    spans = out["spans"]
    names = [s["name"] for s in spans]
    # One span per decision (4) and per tool execution (2).
    assert names.count("execgate.decide fs.read") == 3
    assert names.count("execgate.decide fs.write") == 1
    assert names.count("execute_tool fs.read") == 2
    tools = [s for s in spans if s["name"] == "execute_tool fs.read"]
    ok, failed = tools
    for s in tools:
        assert s["kind"] == "INTERNAL" and s["parent"] == out["agent"]
        a = s["attributes"]
        assert a["gen_ai.operation.name"] == "execute_tool"
        assert a["gen_ai.tool.name"] == "fs.read"
        assert a["execgate.policy.digest"] == out["digest"]
        assert len(a["execgate.receipt.id"]) > 0 and len(a["execgate.completion.id"]) > 0
    assert ok["attributes"]["gen_ai.tool.call.id"] == "call_42" and ok["status"] == "UNSET"
    assert "gen_ai.tool.call.id" not in failed["attributes"]
    assert failed["attributes"]["error.type"] == "OSError" and failed["status"] == "ERROR"
    # The decision span of a tool precedes its execution span.
    decide_ok = next(
        s
        for s in spans
        if s["name"] == "execgate.decide fs.read"
        and s["attributes"].get("gen_ai.tool.call.id") == "call_42"
    )
    assert decide_ok["end"] <= ok["start"] and decide_ok["parent"] == out["agent"]
    deny = next(s for s in spans if s["name"] == "execgate.decide fs.write")["attributes"]
    assert deny["execgate.decision"] == "denied" and deny["execgate.blocked"] is True
    assert deny["execgate.receipt.id"] == out["denied_receipt"]
    assert deny["execgate.action"] == "fs.write" and deny["execgate.mode"] == "enforce"
    # Reasons leave the process only through the privacy router.
    (reason,) = deny["execgate.reasons"]
    assert reason.startswith("writes are off for") and "ann@example.com" not in reason
    assert decide_ok["attributes"]["execgate.decision"] == "allowed"

    metrics = out["metrics"]
    counts = {
        p["attributes"]["execgate.decision"] + ":" + p["attributes"]["execgate.action"]: p["value"]
        for p in metrics["execgate.decisions"]["points"]
    }
    assert counts == {"allowed:fs.read": 3, "denied:fs.write": 1}
    duration = metrics["execgate.decision.duration"]
    assert duration["unit"] == "s"
    assert sum(p["value"]["count"] for p in duration["points"]) == 4
    assert all(p["value"]["sum"] > 0 for p in duration["points"])
    # The shipping lag gauge: absent until a shipper reports, then per log.
    assert not (out["lags_before"] or {}).get("points")
    assert metrics["execgate.audit.shipping.lag"]["points"] == [
        {"attributes": {"execgate.log.id": "log-1"}, "value": 2.5}
    ]
    assert not (out["lags_after"] or {}).get("points")


def test_stale_bundle_and_revision_attributes(tmp_path: Any) -> None:
    key = tmp_path / "b.key"
    pub = tmp_path / "b.pub"
    src = tmp_path / "src"
    src.mkdir()
    (src / "p.rego").write_text('package execgate\ndecision := {"allow": true}\n')
    out = _child(
        SDK
        + f"""
import time
import execgate
from execgate._core import build_bundle
k = execgate.SigningKey.generate()
k.to_pem({str(key)!r}); k.verify_key.to_pem({str(pub)!r})
build_bundle({str(src)!r}, k, {str(tmp_path / "b.tar.gz")!r}, "r7")
gate = execgate.Gate(bundle={str(tmp_path / "b.tar.gz")!r}, bundle_key={str(pub)!r}, bundle_max_age=0.2)
gate.check("x")
time.sleep(0.3)
gate.check("x")
print(json.dumps(span_dicts()))
"""
    )
    fresh, stale = (s["attributes"] for s in out)
    assert fresh["execgate.policy.revision"] == "r7" and fresh["execgate.decision"] == "allowed"
    assert stale["execgate.error"] == "stale" and "stale" in stale["execgate.reasons"][0]


def test_nothing_is_imported_without_the_extra() -> None:
    out = _child(
        """
import json, sys
sys.modules["opentelemetry"] = None  # as if the extra were not installed
import execgate
from execgate import telemetry
gate = execgate.Gate('package execgate\\ndecision := true\\n')

@gate.guard(action="t")
def tool():
    return 1

assert tool() == 1 and gate.check("t").allowed
print(json.dumps({
    "loaded": sorted(m for m in sys.modules if m.startswith(("opentelemetry.", "execgate._otel"))),
    "current": telemetry.current() is not None,
}))
"""
    )
    assert out == {"loaded": [], "current": False}


def test_installed_but_not_configured_is_a_no_op_and_import_is_lazy() -> None:
    out = _child(
        """
import json, sys
import execgate
imported_early = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
from execgate import telemetry
gate = execgate.Gate('package execgate\\ndecision := true\\n')

@gate.guard(action="t")
def tool():
    return 1

assert tool() == 1
print(json.dumps({
    "imported_early": imported_early,
    "imported": "opentelemetry.trace" in sys.modules,
    "current": telemetry.current() is not None,
}))
"""
    )
    # `import execgate` alone imports nothing of OpenTelemetry; a gate loads the
    # API, whose tracer and meter are no-ops until an SDK is configured: the
    # pipeline reports nothing to them.
    assert out == {"imported_early": [], "imported": True, "current": False}


@pytest.mark.parametrize("wake", ["time.sleep(1.2)", "telemetry.enable()"])
def test_an_sdk_configured_after_the_gate_is_picked_up(wake: str) -> None:
    """Within a second (the poll), or at once after telemetry.enable()."""
    out = _child(
        """
import execgate, time
from execgate import telemetry
gate = execgate.Gate('package execgate\\ndecision := true\\n')
gate.check("before")
"""
        + SDK
        + f"""
{wake}
gate.check("after")
print(json.dumps([s["name"] for s in span_dicts()]))
"""
    )
    assert out == ["execgate.decide after"]


def test_telemetry_can_be_turned_off() -> None:
    out = _child(
        SDK
        + """
import execgate
from execgate import telemetry
gate = execgate.Gate('package execgate\\ndecision := true\\n')
telemetry.enable(False)
gate.check("off")
telemetry.enable(True)
gate.check("on")
print(json.dumps([s["name"] for s in span_dicts()]))
"""
    )
    assert out == ["execgate.decide on"]
