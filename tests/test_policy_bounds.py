"""Policy evaluation that cannot take the process down (issue 12).

Each bomb runs in a child process under an address-space limit (RLIMIT_AS), so
a regression fails the test instead of exhausting the test machine's memory.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import textwrap
import time

import pytest

import execgate

# Address space of a bomb's child: the interpreter and extension need a few
# hundred MiB of mappings; 1.5 GiB leaves far less room than any bomb needs.
CHILD_AS_BYTES = 1536 << 20
TIMEOUT = 0.1


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_AS_BYTES, CHILD_AS_BYTES))


def run_child(policy: str, args: dict[str, object] | None = None) -> dict[str, object]:
    """Evaluates ``policy`` in a child with RLIMIT_AS; returns what it decided."""
    script = textwrap.dedent(
        """
        import json, sys, time, execgate
        policy, args, timeout = json.loads(sys.stdin.read())
        gate = execgate.Gate(policy, timeout=timeout)
        start = time.monotonic()
        d = gate.check("x", args)
        print(json.dumps({"allowed": d.allowed, "error": d.error, "reasons": list(d.reasons),
                          "seconds": time.monotonic() - start}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps([policy, args or {}, TIMEOUT]),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_address_space,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    result: dict[str, object] = json.loads(done.stdout)
    return result


DOUBLING = "\n".join(f's{i} := replace(s{i - 1}, "a", "aa")' for i in range(1, 13))

BOMBS = {
    "range": "decision := count(numbers.range(0, 1e9)) > 0",
    "range_step": "decision := count(numbers.range_step(0, 1e9, 1)) > 0",
    "cidr_expand": 'decision := count(net.cidr_expand("::/64")) > 0',
    "comprehension": "decision := count([x | some x in numbers.range(1, 1e8)]) > 0",
    "sprintf_width": 'decision := count(sprintf("%999999999d", [1])) > 0',
    "replace_doubling": (
        's0 := concat("", ["a" | some _ in numbers.range(1, 10000)])\n'
        + DOUBLING
        + '\ndecision := {"allow": count(s12) > 0}'
    ),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_builtin_bombs_deny_with_limit_quickly(name: str) -> None:
    result = run_child("package execgate\n" + BOMBS[name] + "\n")
    assert result["allowed"] is False
    assert result["error"] == "limit", result
    assert "limit" in str(result["reasons"])
    # "Within a small multiple of the timeout", with a generous bound for a noisy machine.
    assert float(str(result["seconds"])) < TIMEOUT * 10, result


def test_argument_sized_builtin_with_a_huge_argument_denies() -> None:
    policy = "package execgate\ndecision := count(numbers.range(0, input.action.args.n)) < 10\n"
    assert run_child(policy, {"n": 5})["allowed"] is True
    result = run_child(policy, {"n": 2_000_000_000})
    assert (result["allowed"], result["error"]) == (False, "limit"), result
    assert "max_memory" in str(result["reasons"])


def test_memory_budget_is_configurable_and_named() -> None:
    policy = "package execgate\ndecision := count(numbers.range(1, 100000)) > 0\n"
    assert execgate.Gate(policy).check("x").allowed
    assert execgate.Gate(policy).max_memory == 64 << 20
    small = execgate.Gate(policy, max_memory=100_000)
    assert small.max_memory == 100_000
    d = small.check("x")
    assert (d.allowed, d.error) == (False, "limit")
    assert "max_memory=100000" in d.reasons[0]


@pytest.mark.parametrize(
    ("rego", "cycle"),
    [
        ("f(x) := f(x)\ndecision := f(1)", "data.execgate.f -> data.execgate.f"),
        ("a := b\nb := a\ndecision := a", "data.execgate.a -> data.execgate.b -> data.execgate.a"),
        (
            "helper(x) := g(x)\ng(x) := helper(x)\ndecision := g(1)",
            "data.execgate.g -> data.execgate.helper -> data.execgate.g",
        ),
    ],
)
def test_recursion_is_a_policy_error_naming_the_cycle(rego: str, cycle: str) -> None:
    with pytest.raises(execgate.PolicyError, match="recursion") as info:
        execgate.Gate("package execgate\n" + rego + "\n")
    assert cycle in str(info.value)


def test_reload_of_a_recursive_policy_keeps_the_old_one(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.rego"
    path.write_text("package execgate\ndecision := true\n")
    gate = execgate.Gate(path)
    path.write_text("package execgate\na := b\nb := a\ndecision := a\n")
    with pytest.raises(execgate.PolicyError, match="recursion"):
        gate.reload()
    assert gate.check("x").allowed


def _fifo(tmp_path: pathlib.Path, name: str) -> pathlib.Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


def test_fifo_directory_and_oversized_policy_files_are_refused_quickly(
    tmp_path: pathlib.Path,
) -> None:
    start = time.monotonic()
    with pytest.raises(execgate.PolicyError, match="FIFO"):
        execgate.Gate(_fifo(tmp_path, "p.rego"))
    with pytest.raises(execgate.PolicyError, match="FIFO"):
        execgate.Gate("package execgate\ndecision := true\n", data=_fifo(tmp_path, "d.json"))
    big = tmp_path / "big.rego"
    with big.open("wb") as f:
        f.truncate((4 << 20) + 1)
    with pytest.raises(execgate.PolicyError, match="byte limit"):
        execgate.Gate(big)
    with pytest.raises(execgate.PolicyError, match="character device"):
        execgate.Gate("package execgate\ndecision := true\n", data="/dev/zero")
    (tmp_path / "empty").mkdir()
    with pytest.raises(execgate.PolicyError):
        execgate.Gate(tmp_path / "empty")
    assert time.monotonic() - start < 10


def test_fifo_and_oversized_key_files_are_refused_quickly(tmp_path: pathlib.Path) -> None:
    start = time.monotonic()
    fifo = _fifo(tmp_path, "k.pem")
    os.chmod(fifo, 0o600)
    with pytest.raises(execgate.ExecgateError, match=r"not a file|FIFO"):
        execgate.SigningKey.from_pem(fifo)
    big = tmp_path / "big.pem"
    with big.open("wb") as f:
        f.truncate(2 << 30)
    os.chmod(big, 0o600)
    with pytest.raises(execgate.ExecgateError, match="byte limit"):
        execgate.SigningKey.from_pem(big)
    with pytest.raises(execgate.ExecgateError, match="byte limit"):
        execgate.VerifyKey.from_pem(big)
    assert time.monotonic() - start < 10
