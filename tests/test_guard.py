"""@gate.guard on every kind of callable; denied bodies never run."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import inspect
import pathlib
import uuid
from typing import get_type_hints

import pytest

import execgate

POLICY = """
package execgate
decision := {"allow": allowed, "reasons": reasons}

default allowed := false
allowed if {
    allowed_action
    not contains(object.get(input.action.args, "path", ""), "secret")
}

allowed_action if input.action.name in {"read", "stream", "astream", "fetch", "probe"}
allowed_action if endswith(input.action.name, ".Box.read")

reasons := [] if allowed
reasons := [sprintf("%s is not allowed", [input.action.name])] if not allowed
"""


@pytest.fixture
def gate() -> execgate.Gate:
    return execgate.Gate(POLICY)


def test_sync_function_allowed_and_denied(gate: execgate.Gate) -> None:
    ran: list[str] = []

    @gate.guard(action="read")
    def read(path: str, mode: str = "r") -> str:
        ran.append(path)
        return f"{path}:{mode}"

    assert read("/a") == "/a:r"
    with pytest.raises(execgate.ActionDenied) as info:
        read("/secret")
    assert ran == ["/a"]
    assert isinstance(info.value, PermissionError)
    assert info.value.decision.input["action"]["args"] == {"path": "/secret", "mode": "r"}


def test_default_action_name_is_qualname(gate: execgate.Gate) -> None:
    @gate.guard
    def other() -> None:
        raise AssertionError("body must not run")

    with pytest.raises(execgate.ActionDenied) as info:
        other()
    assert info.value.action == other.__qualname__
    assert "is not allowed" in info.value.reasons[0]


def test_arguments_bound_to_names_with_defaults() -> None:
    # Binding is observed through what the decorator hands to the gate.
    captured: list[dict[str, object]] = []

    rec = execgate.Gate(POLICY)
    decide = rec.pipeline.decide

    def recording_decide(action, args, *rest, **options):  # type: ignore[no-untyped-def]
        captured.append(args)
        return decide(action, args, *rest, **options)

    rec.pipeline.decide = recording_decide  # type: ignore[method-assign]

    @rec.guard(action="probe")
    def probe2(a: int, b: int = 2, *rest: int, c: str = "x", **extra: object) -> None:
        pass

    @rec.guard(action="probe")
    def plain2(a: int, b: int = 2, *, c: str = "x") -> None:
        pass

    probe2(1)
    probe2(1, 3, 4, 5, c="y", z=True)
    plain2(1)
    plain2(b=5, a=1, c="q")
    assert captured == [
        {"a": 1, "b": 2, "rest": (), "c": "x"},
        {"a": 1, "b": 3, "rest": (4, 5), "c": "y", "z": True},
        {"a": 1, "b": 2, "c": "x"},
        {"a": 1, "b": 5, "c": "q"},
    ]
    with pytest.raises(TypeError):
        plain2()  # missing required argument: the normal TypeError, body not run
    with pytest.raises(TypeError):
        plain2(1, nope=2)


def test_methods_classmethods_staticmethods(gate: execgate.Gate) -> None:
    class Box:
        def __init__(self) -> None:
            self.calls = 0

        @gate.guard
        def read(self, path: str) -> str:
            self.calls += 1
            return path

        @classmethod
        @gate.guard(action="read")
        def make(cls, path: str) -> str:
            return path

        @staticmethod
        @gate.guard(action="read")
        def util(path: str) -> str:
            return path

    box = Box()
    assert box.read("/ok") == "/ok"  # action "...Box.read"; self is not sent to policy
    with pytest.raises(execgate.ActionDenied) as info:
        box.read("/secret")
    assert box.calls == 1
    assert "self" not in info.value.decision.input["action"]["args"]
    assert Box.make("/x") == "/x"
    assert Box.util("/y") == "/y"
    with pytest.raises(execgate.ActionDenied):
        Box.util("/secret")


def test_async_function(gate: execgate.Gate) -> None:
    ran: list[str] = []

    @gate.guard(action="fetch")
    async def fetch(path: str) -> str:
        ran.append(path)
        await asyncio.sleep(0)
        return path

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch("/a")) == "/a"
    with pytest.raises(execgate.ActionDenied):
        asyncio.run(fetch("/secret"))
    assert ran == ["/a"]


def test_generator_checked_before_first_item(gate: execgate.Gate) -> None:
    started: list[bool] = []

    @gate.guard(action="stream")
    def stream(path: str, n: int = 3):  # type: ignore[no-untyped-def]
        started.append(True)
        yield from range(n)

    assert inspect.isgeneratorfunction(stream)
    assert list(stream("/a")) == [0, 1, 2]
    gen = stream("/secret")
    with pytest.raises(execgate.ActionDenied):
        next(gen)
    assert started == [True]


def test_async_generator(gate: execgate.Gate) -> None:
    @gate.guard(action="astream")
    async def astream(path: str):  # type: ignore[no-untyped-def]
        for i in range(2):
            yield i

    async def collect(path: str) -> list[int]:
        return [i async for i in astream(path)]

    assert inspect.isasyncgenfunction(astream)
    assert asyncio.run(collect("/a")) == [0, 1]
    with pytest.raises(execgate.ActionDenied):
        asyncio.run(collect("/secret"))


def test_metadata_and_signature_survive(gate: execgate.Gate) -> None:
    def read(path: str, mode: str = "r") -> str:
        """Read a file."""
        return path

    guarded = gate.guard(action="read")(read)
    assert guarded.__name__ == "read" and guarded.__doc__ == "Read a file."
    assert inspect.signature(guarded) == inspect.signature(read)
    assert get_type_hints(guarded) == {"path": str, "mode": str, "return": str}
    assert guarded.__wrapped__ is read  # type: ignore[attr-defined]


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_documented_argument_conversions(gate: execgate.Gate) -> None:
    when = dt.datetime(2026, 3, 14, 10, 0, tzinfo=dt.timezone.utc)
    uid = uuid.UUID(int=1)
    d = gate.check(
        "read",
        {
            "when": when,
            "day": dt.date(2026, 3, 14),
            "path": pathlib.PurePosixPath("/workspace/a"),
            "color": Color.RED,
            "blob": b"abc",
            "point": Point(1, 2),
            "uid": uid,
            "nested": {"t": (1, 2), "tags": frozenset({"b", "a"})},
            "big": 2**63,
            "none": None,
            "flag": True,
            "ratio": 0.5,
        },
    )
    args = d.input["action"]["args"]
    assert args["when"] == "2026-03-14T10:00:00+00:00"
    assert args["day"] == "2026-03-14"
    assert args["path"] == "/workspace/a"
    assert args["color"] == "red"
    assert args["blob"] == {
        "bytes_sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "size": 3,
    }
    assert args["point"] == {"x": 1, "y": 2}
    assert args["uid"] == str(uid)
    assert args["nested"] == {"t": [1, 2], "tags": ["a", "b"]}
    assert args["big"] == 2**63
    assert (args["none"], args["flag"], args["ratio"]) == (None, True, 0.5)


def test_pydantic_model_argument(gate: execgate.Gate) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Req(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        path: str
        when: dt.date

    d = gate.check("read", {"req": Req(path="/p", when=dt.date(2026, 1, 2))})
    assert d.input["action"]["args"]["req"] == {"path": "/p", "when": "2026-01-02"}


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (object(), "args.bad"),
        ({"inner": [1, object()]}, "args.bad.inner[1]"),
        ({1: "int key"}, "args.bad"),
        (float("nan"), "args.bad"),
        (2**70, "args.bad"),
        (dt.datetime(2026, 1, 1), "args.bad"),
        (lambda: None, "args.bad"),
    ],
)
def test_unsupported_arguments_raise_and_tool_does_not_run(
    gate: execgate.Gate, value: object, where: str
) -> None:
    ran: list[bool] = []

    @gate.guard(action="read")
    def read(bad: object) -> None:
        ran.append(True)

    with pytest.raises(execgate.ArgumentError) as info:
        read(value)
    assert info.value.argument == where
    assert where in str(info.value)
    assert isinstance(info.value, execgate.ExecgateError) and isinstance(info.value, TypeError)
    assert ran == []


def test_self_referencing_argument_is_rejected(gate: execgate.Gate) -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(execgate.ArgumentError, match="nested more than"):
        gate.check("read", {"loop": loop})


def test_decorator_principal_and_context_override_ambient(gate: execgate.Gate) -> None:
    @gate.guard(action="read", principal={"id": "fixed"}, context={"purpose": "fixed"})
    def read(path: str) -> None:
        raise RuntimeError("boom")

    with (
        execgate.principal("ambient", roles=["agent"]),
        execgate.context(purpose="ambient", session="s"),
    ):
        with pytest.raises(RuntimeError):
            read("/a")
        d = gate.check(
            "read", {"path": "/a"}, principal={"id": "fixed"}, context={"purpose": "fixed"}
        )
    assert d.input["principal"] == {"id": "fixed", "roles": ["agent"]}
    assert d.input["context"]["purpose"] == "fixed" and d.input["context"]["session"] == "s"


@pytest.mark.parametrize("signing", ["record", "checkpoint"])
def test_only_untracked_calls_skip_the_completion(tmp_path: pathlib.Path, signing: str) -> None:
    """A call is untracked (its body called without a Run) only when nothing
    is recorded or redacted after it: with a log (either signing mode) or an
    output redaction the completion and the redaction still happen."""
    policy = """
package execgate
decision := {"allow": true} if input.action.name == "plain"
decision := {"allow": true, "obligations": {"redact": {"output": {}}}} if input.action.name == "secret"
"""
    bare = execgate.Gate(policy)
    plain, _ = bare.pipeline.decide("plain", {})
    secret, _ = bare.pipeline.decide("secret", {})
    assert (plain.tracked, secret.tracked) == (False, True)
    assert bare.guard(action="secret")(lambda: "mail bob@example.com")() == "mail ***@example.com"

    log = tmp_path / "audit.jsonl"
    key = execgate.SigningKey.generate()
    logged = execgate.Gate(policy, audit=execgate.AuditLog(log, key, signing=signing))
    call, _ = logged.pipeline.decide("plain", {})
    assert call.tracked
    assert logged.guard(action="plain")(lambda: 7)() == 7
    logged.close()
    report = execgate.verify_log(log, key.verify_key)
    # the call decided above never ran; the guarded one has its completion
    assert report.ok and report.completions == 1 and report.unfinished_count == 1, report
