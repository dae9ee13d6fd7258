"""Regression tests for each way the pipeline failed open when tried as an
attacker would (issue 10's findings), one test or more per finding."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import pathlib
import pickle
import threading
import time
from importlib import resources
from typing import Annotated, Any

import pytest

import execgate
from execgate import Limits, Sandbox

ALLOW = "package execgate\ndecision := true\n"
OBLIGED = """
package execgate
decision := {"allow": true, "obligations": data.ob}
"""


def obliged(ob: dict[str, Any], **options: Any) -> execgate.Gate:
    return execgate.Gate(OBLIGED, data={"ob": ob}, **options)


# -- 1. the isolate channel carries data, never code ---------------------------

MARKER = pathlib.Path(os.environ.get("EXECGATE_TEST_MARKER_DIR", "/tmp")) / "execgate-pwned"
ISOLATING = execgate.Gate(ALLOW, key=execgate.SigningKey.generate())
BOX = Sandbox(limits=Limits(wall=30, memory="512M"), write=["/tmp"])


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {MARKER}",))


@ISOLATING.guard(isolate=BOX)
def writes_a_pickle() -> None:
    os.write(1, pickle.dumps(("ok", _Payload())))
    os._exit(0)


@ISOLATING.guard(isolate=BOX)
def writes_garbage(kind: str) -> None:
    data = {
        "binary": b"\x80\x04\x95garbage\xff",
        "two": b'{"ok": 1}{"ok": 2}',
        "nan": b'{"ok": NaN}',
        "shape": b'{"ok": 1, "error": 2}',
        "error_shape": b'{"error": {"type": 1}}',
    }[kind]
    os.write(1, data)
    os._exit(0)


@ISOLATING.guard(isolate=BOX)
def raises(kind: str) -> None:
    if kind == "exit":
        raise SystemExit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "custom":
        raise ConnectionAbortedError("custom")
    raise KeyError("missing")


@ISOLATING.guard(isolate=BOX)
def echo(value: Any) -> Any:
    return value


def test_a_pickle_from_the_child_is_never_loaded() -> None:
    MARKER.unlink(missing_ok=True)
    with pytest.raises(execgate.SandboxError, match="one JSON reply"):
        writes_a_pickle()
    assert not MARKER.exists(), "the child's pickle ran code in the parent"


@pytest.mark.parametrize("kind", ["binary", "two", "nan", "shape", "error_shape"])
def test_garbage_from_the_child_is_a_typed_error(kind: str) -> None:
    with pytest.raises(execgate.SandboxError):
        writes_garbage(kind)


def test_child_exceptions_are_rebuilt_as_data_and_never_end_the_parent() -> None:
    with pytest.raises(KeyError, match="missing"):
        raises("key")
    for kind, name in [
        ("exit", "SystemExit"),
        ("interrupt", "KeyboardInterrupt"),
        ("custom", "ConnectionAbortedError"),
    ]:
        with pytest.raises(execgate.IsolatedError) as info:
            raises(kind)
        assert info.value.type_name == name and info.value.module == "builtins"


def test_values_cross_the_channel_by_the_conversion_rules() -> None:
    value = {"b": b"\x00\xff", "t": (1, 2), "when": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    assert echo(value) == {"b": b"\x00\xff", "t": [1, 2], "when": "2026-01-01T00:00:00+00:00"}


def test_the_package_does_not_unpickle() -> None:
    import re

    code = re.compile(
        r"^\s*(import|from)\s+(pickle|marshal|dill|cloudpickle)\b|\b(pickle|marshal)\."
    )
    root = pathlib.Path(execgate.__file__).parent
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            assert not code.search(line), (path, line)


# -- 2. check() means "may run now" --------------------------------------------


def test_check_does_not_allow_a_pending_approval_and_asks_the_approver() -> None:
    ob = {"approval": {"reason": "prod"}}
    d = obliged(ob).check("deploy")
    assert not d.allowed and d.error == "approval" and "pending approval" in d.reasons[0]
    asked: list[str] = []

    def approver(request: execgate.ApprovalRequest) -> bool:
        asked.append(request.action)
        return True

    d = obliged(ob, approver=approver).check("deploy")
    assert d.allowed and asked == ["deploy"] and d.approval["approved"] is True


# -- 5. sequence rules see the history without configuration --------------------


def test_a_sequence_rule_fires_without_any_history_setting() -> None:
    policy = resources.files("execgate") / "examples" / "no_exfiltration.rego"
    gate = execgate.Gate(pathlib.Path(str(policy)))
    with execgate.context(session="s"):
        assert gate.check("secrets.read", {"name": "db"}).allowed
        assert not gate.check("http.post", {"url": "https://x"}).allowed


# -- 6. limits are spent only by calls that proceed ----------------------------


def test_a_refused_approval_does_not_spend_the_last_unit() -> None:
    answers = iter([False, True, True])
    gate = obliged(
        {"approval": True, "budget": {"key": "deploys", "limit": 1, "cost": 1}},
        approver=lambda request: next(answers),
    )
    assert gate.check("deploy").error == "approval"
    assert gate.check("deploy").allowed, "the refused call used the budget"
    assert "budget exceeded" in gate.check("deploy").reasons[0]


def test_a_decision_that_cannot_be_recorded_gives_its_units_back(tmp_path: pathlib.Path) -> None:
    key = execgate.SigningKey.generate()
    log = tmp_path / "audit.jsonl"
    gate = obliged({"budget": {"key": "k", "limit": 1, "cost": 1}}, key=key, audit=log)
    log.unlink()  # the writer refuses to write into an unlinked file
    d = gate.check("x")
    assert not d.allowed and d.error == "audit"
    plain = obliged({"budget": {"key": "k", "limit": 1, "cost": 1}})
    assert plain.check("x").allowed and not plain.check("x").allowed


# -- 7. no panics --------------------------------------------------------------


@pytest.mark.parametrize("value", [1e300, float("inf"), float("nan"), -1.0, 0.0])
def test_huge_or_bad_durations_are_configuration_errors(value: float) -> None:
    with pytest.raises(execgate.ConfigurationError):
        execgate.Gate(ALLOW, timeout=value)
    with pytest.raises(execgate.ConfigurationError):
        Sandbox(limits=Limits(wall=value)).run(["/bin/true"])
    with pytest.raises(execgate.ConfigurationError):
        execgate.AuditLog(
            None, execgate.SigningKey.generate(), durability="batch", batch_interval=value
        )


def test_a_huge_sandbox_obligation_is_a_deny() -> None:
    gate = obliged({"sandbox": {"limits": {"wall_seconds": 1e300}}})
    with pytest.raises(execgate.ActionDenied, match="out of range") as info:
        gate.run(["/bin/true"])
    assert info.value.decision.error == "obligation"


def test_a_lone_surrogate_is_an_argument_error() -> None:
    with pytest.raises(execgate.ArgumentError) as info:
        execgate.Gate(ALLOW).check("x", {"s": "\ud800"})
    assert info.value.argument == "args.s"


def test_three_equivalent_bad_options_raise_one_class() -> None:
    key = execgate.SigningKey.generate()
    for bad in (
        lambda: execgate.Gate(ALLOW, mode="permissive"),  # type: ignore[arg-type]
        lambda: execgate.Gate(ALLOW, timeout=-1),
        lambda: execgate.AuditLog(None, key, durability="sometimes"),  # type: ignore[arg-type]
        lambda: execgate.AuditLog(None, key, signing="never"),  # type: ignore[arg-type]
        lambda: Sandbox(network="wifi").run(["/bin/true"]),  # type: ignore[arg-type]
    ):
        with pytest.raises(execgate.ConfigurationError):
            bad()
    assert issubclass(execgate.ConfigurationError, ValueError)


# -- 8. what the policy sees is what the tool gets -----------------------------

SEEN: list[dict[str, Any]] = []
RECEIVED: list[tuple[Any, ...]] = []
PATHS = """
package execgate
import rego.v1
default decision := false
decision if every p in input.action.args.paths { startswith(p, "/workspace/") }
"""


def test_a_keyword_cannot_shadow_the_positionals() -> None:
    gate = execgate.Gate(PATHS)

    @gate.guard(action="fs.read")
    def read(*paths: str, **options: Any) -> tuple[str, ...]:
        return paths

    with pytest.raises(execgate.ArgumentError, match="collides"):
        read("/etc/passwd", paths=["/workspace/ok"])
    assert read("/workspace/a") == ("/workspace/a",)
    with pytest.raises(execgate.ActionDenied):
        read("/etc/passwd")


class LyingStr(str):
    def __str__(self) -> str:
        return "/workspace/decoy"

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


class LyingInt(int):
    def __int__(self) -> int:
        return 1

    def __index__(self) -> int:
        return 1


class LyingDict(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return [("path", "/workspace/decoy")]

    def keys(self) -> Any:
        return ["path"]

    def __iter__(self) -> Any:
        return iter(["path"])

    def __getitem__(self, key: Any) -> Any:
        return "/workspace/decoy"


class LyingList(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        return iter(["/workspace/decoy"])


class LyingPath(pathlib.PosixPath):
    def __str__(self) -> str:
        return "/workspace/decoy"

    def __fspath__(self) -> str:
        return "/workspace/decoy"


class LyingDatetime(dt.datetime):
    def isoformat(self, *a: Any, **k: Any) -> str:
        return "2000-01-01T00:00:00+00:00"


def test_adversarial_subclasses_show_the_policy_what_the_tool_gets() -> None:
    gate = execgate.Gate(ALLOW)
    seen: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []

    @gate.guard(action="probe")
    def probe(s: Any, i: Any, d: Any, l: Any, p: Any, t: Any) -> None:  # noqa: E741
        received.append({"s": s, "i": i, "d": d, "l": l, "p": p, "t": t})

    original = gate.pipeline.decide

    def spy(*args: Any, **kwargs: Any) -> Any:
        call, decision = original(*args, **kwargs)
        seen.append(decision.input["action"]["args"])
        return call, decision

    gate.pipeline.decide = spy  # type: ignore[method-assign]
    when = LyingDatetime(2026, 5, 4, tzinfo=dt.timezone.utc)
    probe(
        LyingStr("/etc/shadow"),
        LyingInt(99),
        LyingDict(path="/etc/shadow"),
        LyingList(["/etc/shadow"]),
        LyingPath("/etc/shadow"),
        when,
    )
    (policy,), (tool,) = seen, received
    assert policy == {
        "s": "/etc/shadow",
        "i": 99,
        "d": {"path": "/etc/shadow"},
        "l": ["/etc/shadow"],
        "p": "/etc/shadow",
        "t": "2026-05-04T00:00:00+00:00",
    }
    # The tool gets plain values of the standard types, equal to what was judged.
    assert type(tool["s"]) is str and tool["s"] == "/etc/shadow"
    assert type(tool["i"]) is int and tool["i"] == 99
    assert type(tool["d"]) is dict and tool["d"] == {"path": "/etc/shadow"}
    assert type(tool["l"]) is list and tool["l"] == ["/etc/shadow"]
    assert type(tool["p"]) is pathlib.PosixPath and os.fspath(tool["p"]) == "/etc/shadow"
    assert type(tool["t"]) is dt.datetime and tool["t"].isoformat() == policy["t"]


def test_a_container_changed_during_conversion_is_refused() -> None:
    target: dict[str, Any] = {"a": 1}

    @dataclasses.dataclass
    class Mutator:
        x: int

        def __getattribute__(self, name: str) -> Any:
            if name == "x":
                target["late"] = "/etc/passwd"
            return object.__getattribute__(self, name)

    target["m"] = Mutator(1)
    with pytest.raises(execgate.ArgumentError, match="changed while it was being converted"):
        execgate.Gate(ALLOW).check("x", {"d": target})


def test_a_list_mutated_after_the_check_does_not_reach_the_tool() -> None:
    gate = execgate.Gate(PATHS)
    paths = ["/workspace/a"]
    got: list[Any] = []

    @gate.guard(action="fs.read")
    def read(paths: list[str]) -> None:
        got.append(paths)

    original = gate.pipeline.decide

    def decide_then_mutate(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        paths.append("/etc/passwd")  # another thread, after the check
        return result

    gate.pipeline.decide = decide_then_mutate  # type: ignore[method-assign]
    read(paths)
    assert got == [["/workspace/a"]]


def test_only_immutable_exact_scalars_reach_the_tool_as_the_callers_objects() -> None:
    """The tool may be handed the caller's own objects only when nothing can
    differ from what was judged: exact immutable scalars, arguments the
    obligations left alone. Anything else is a copy of the judged tree."""
    received: list[dict[str, Any]] = []

    @execgate.Gate(ALLOW).guard(action="x")
    def tool(s: str, n: int, b: bytes, items: Any = None) -> None:
        received.append({"s": s, "n": n, "b": b, "items": items})

    s, n, b = "/workspace/" + "a" * 40, 10**12, b"payload"
    tool(s, n, b)
    assert all(received[-1][k] is v for k, v in {"s": s, "n": n, "b": b}.items())

    class Lying(str):
        pass

    items = ["/workspace/a"]
    tool(Lying(s), n, b, items=items)
    got = received[-1]
    assert type(got["s"]) is str and got["s"] == s  # a subclass is never passed on
    assert got["items"] == items and got["items"] is not items  # a container is a copy

    rewriting = obliged({"args": {"s": "/workspace/rewritten"}})

    @rewriting.guard(action="x")
    def rewritten(s: str) -> str:
        return s

    assert rewritten(s) == "/workspace/rewritten"


# -- 9. other entry points -----------------------------------------------------


def test_an_approval_wait_does_not_block_the_event_loop() -> None:
    def slow(request: execgate.ApprovalRequest) -> bool:
        time.sleep(0.3)
        return True

    gate = obliged({"approval": True}, approver=slow)

    @gate.guard(action="deploy")
    async def deploy() -> str:
        return "deployed"

    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await deploy()
        task.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result == "deployed" and ticks >= 10, ticks


if importlib.util.find_spec("langchain") is not None:
    from langchain_core.messages import ToolMessage as _ToolMessage
    from langchain_core.tools import InjectedToolCallId
    from langchain_core.tools import tool as _tool
    from langgraph.types import Command

    @_tool
    def lookup(q: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:  # type: ignore[type-arg]
        """Look something up."""
        message = _ToolMessage("card 4111 1111 1111 1111", tool_call_id=tool_call_id)
        return Command(update={"messages": [message]})


def test_middleware_redacts_a_tool_message_inside_a_command() -> None:
    pytest.importorskip("langchain")
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, ToolMessage

    from execgate.integrations.langchain import ExecgateMiddleware

    class Model(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Model:
            return self

    gate = obliged({"redact": {"output": {}}})
    model = Model(
        messages=iter(
            [
                AIMessage(
                    content="", tool_calls=[{"name": "lookup", "args": {"q": "x"}, "id": "1"}]
                ),
                AIMessage(content="done"),
            ]
        )
    )
    agent = create_agent(model, tools=[lookup], middleware=[ExecgateMiddleware(gate)])
    out = agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    shown = [m.content for m in out["messages"] if isinstance(m, ToolMessage)]
    assert shown and all("4111 1111 1111 1111" not in str(c) for c in shown), shown
    assert any("[card:" in str(c) for c in shown)


# -- 10. history and receipts ---------------------------------------------------


def test_history_survives_a_restart_for_an_email_shaped_session(tmp_path: pathlib.Path) -> None:
    policy = pathlib.Path(str(resources.files("execgate") / "examples" / "no_exfiltration.rego"))
    key = execgate.SigningKey.generate()
    log = tmp_path / "audit.jsonl"
    session = "alice@example.com"
    with execgate.Gate(policy, key=key, audit=log) as gate, execgate.context(session=session):
        assert gate.check("secrets.read", {"name": "db"}).allowed
    with execgate.Gate(policy, key=key, audit=log) as gate, execgate.context(session=session):
        d = gate.check("http.post", {"url": "https://x"})
    assert not d.allowed, "the restart lost the session's history"
    assert session not in log.read_text()


def test_obligations_pass_the_privacy_router_before_they_are_recorded(
    tmp_path: pathlib.Path,
) -> None:
    key = execgate.SigningKey.generate()
    log = tmp_path / "audit.jsonl"
    policy = """
package execgate
decision := {"allow": true, "obligations": {
    "rate": {"key": sprintf("mail:%v", [input.principal.id]), "limit": 1, "window_seconds": 60},
    "args": {"auth": "Bearer ghp_abcdefghijklmnopqrstuvwxyz0123456789"},
}}
"""
    with execgate.Gate(policy, key=key, audit=log) as gate:
        assert gate.check("mail", principal={"id": "bob@example.com"}).allowed
    text = log.read_text()
    decoded = " ".join(
        json.dumps(execgate.Receipt.from_json(line).payload) for line in text.splitlines()
    )
    for secret in ("bob@example.com", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"):
        assert secret not in text and secret not in decoded
    # The pseudonymised key still counts across a restart.
    with execgate.Gate(policy, key=key, audit=log) as gate:
        assert "rate limit" in gate.check("mail", principal={"id": "bob@example.com"}).reasons[0]


@pytest.mark.parametrize(
    "args",
    [
        {"meta": {"alice@example.com": 1}},
        {"blob": b"token for alice@example.com"},
        {"blob": bytearray(b"\xff\xfe alice@example.com")},
    ],
)
def test_redaction_deny_sees_keys_and_bytes(args: dict[str, Any]) -> None:
    gate = obliged({"redact": {"args": {"transform": "deny", "detectors": ["email"]}}})
    d = gate.check("send", args)
    assert not d.allowed and "email found" in d.reasons[0]


def test_bytes_that_are_not_text_cannot_be_masked_so_the_call_is_refused() -> None:
    gate = obliged({"redact": {"args": {"detectors": ["email"]}}})
    ran: list[bytes] = []

    @gate.guard(action="send")
    def send(blob: bytes) -> None:
        ran.append(blob)

    send(b"to alice@example.com")
    assert ran == [b"to ***@example.com"]
    with pytest.raises(execgate.ActionDenied, match="cannot rewrite"):
        send(b"\xff\xfe alice@example.com")
    assert len(ran) == 1


# -- 11. smaller ---------------------------------------------------------------


def test_usage_shows_only_the_budgets_this_decision_names() -> None:
    policy = """
package execgate
decision := {"allow": true, "obligations": {"budget": {
    "key": sprintf("spend:%v", [input.principal.id]), "limit": 10, "cost": 1}}} if {
    input.usage.session_calls >= 0
}
"""
    gate = execgate.Gate(policy)
    gate.check("buy", principal={"id": "alice"})
    d = gate.check("buy", principal={"id": "bob"})
    assert d.input["usage"]["budgets"] == {"spend:bob": 0}


def test_approval_runs_in_its_own_thread_with_a_timeout() -> None:
    started = threading.Event()

    def never(request: execgate.ApprovalRequest) -> bool:
        started.set()
        time.sleep(10)
        return True

    gate = obliged({"approval": True}, approver=never, approval_timeout=0.2)
    t0 = time.monotonic()
    d = gate.check("x")
    assert started.is_set() and not d.allowed and "timed out" in d.reasons[0]
    assert time.monotonic() - t0 < 5
