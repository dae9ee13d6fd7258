"""Ambient principal/context: contextvars across threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import threading
from types import MappingProxyType

import pytest

import execgate

POLICY = "package execgate\ndecision := true\n"


def test_ambient_values_reach_the_input_and_explicit_ones_win() -> None:
    gate = execgate.Gate(POLICY)
    with execgate.principal("agent-7", roles=["agent"], team="blue"):
        with execgate.context(purpose="summarize", session="s-42"), execgate.purpose("override"):
            d = gate.check("x", principal={"roles": ["admin"]}, context={"tool_call_id": "c1"})
    assert d.input["principal"] == {"id": "agent-7", "roles": ["admin"], "team": "blue"}
    ctx = d.input["context"]
    assert (ctx["purpose"], ctx["session"], ctx["tool_call_id"]) == ("override", "s-42", "c1")
    # Outside the blocks nothing remains.
    d = gate.check("x")
    assert d.input["principal"] == {"id": None, "roles": []}
    assert set(d.input["context"]) == {"time"}


def test_explicit_values_may_be_any_mapping_and_are_checked_like_arguments() -> None:
    """The gate merges the ambient and explicit values itself: a read-only
    mapping is read like a dict, and a value no policy input can hold is an
    ArgumentError naming it, with nothing decided."""
    gate = execgate.Gate(POLICY)
    with execgate.principal("agent-7", team="blue"):
        d = gate.check("x", principal=MappingProxyType({"team": "red"}))
        assert d.input["principal"] == {"id": "agent-7", "roles": [], "team": "red"}
        with pytest.raises(execgate.ArgumentError, match="principal"):
            gate.check("x", principal={"id": float("nan")})
    with execgate.context(session="s-1"), pytest.raises(execgate.ArgumentError, match="context"):
        gate.check("x", context={1: "not a str key"})


def test_nested_principal_replaces_and_restores() -> None:
    with execgate.principal("outer", roles=["a"]):
        with execgate.principal("inner"):
            assert dict(execgate.current_principal()) == {"id": "inner", "roles": []}
        assert execgate.current_principal()["id"] == "outer"
    assert dict(execgate.current_principal()) == {}


def test_threads_keep_their_own_principal() -> None:
    gate = execgate.Gate(POLICY)
    barrier = threading.Barrier(8)
    seen: dict[str, set[str]] = {}

    def worker(name: str) -> None:
        with execgate.principal(name):
            barrier.wait()
            ids = {gate.check("x").input["principal"]["id"] for _ in range(200)}
        seen[name] = ids

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {f"t{i}": {f"t{i}"} for i in range(8)}


def test_asyncio_tasks_keep_their_own_context() -> None:
    gate = execgate.Gate(POLICY)

    async def task(session: str) -> set[str]:
        with execgate.context(session=session):
            out = set()
            for _ in range(20):
                await asyncio.sleep(0)
                out.add(gate.check("x").input["context"]["session"])
            return out

    async def main() -> list[set[str]]:
        return await asyncio.gather(*(task(f"s{i}") for i in range(10)))

    assert asyncio.run(main()) == [{f"s{i}"} for i in range(10)]
