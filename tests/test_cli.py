"""The execgate command line: exit codes 0 allow, 1 deny, 2 error."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import execgate
from execgate.cli import main

POLICY = """package execgate
decision := {"allow": input.principal.id == "alice", "reasons": [sprintf("who: %v at %v", [input.principal.id, input.context.time])]}
"""


@pytest.fixture
def policy(tmp_path: pathlib.Path) -> pathlib.Path:
    f = tmp_path / "p.rego"
    f.write_text(POLICY)
    return f


def _input(tmp_path: pathlib.Path, who: str) -> pathlib.Path:
    f = tmp_path / f"{who}.json"
    f.write_text(
        json.dumps(
            {
                "action": {"name": "fs.read", "args": {"path": "/a"}},
                "principal": {"id": who, "roles": []},
                "context": {"time": "2026-03-14T10:22:33Z"},
            }
        )
    )
    return f


def test_check_allow_deny_and_output(
    policy: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--policy", str(policy), "--input", str(_input(tmp_path, "alice"))]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["allowed"] is True
    # The recorded time in the input file is kept, so the decision is reproducible.
    assert out["reasons"] == ["who: alice at 2026-03-14T10:22:33Z"]
    assert main(["check", "--policy", str(policy), "--input", str(_input(tmp_path, "bob"))]) == 1
    assert json.loads(capsys.readouterr().out)["allowed"] is False


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--policy", "/nonexistent.rego", "--input", "-"],
        ["check", "--input", "-"],
        ["frobnicate"],
        [],
    ],
)
def test_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        code = main(argv)
        raise SystemExit(code)
    assert info.value.code == 2


def test_bad_input_documents_exit_2(
    policy: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    for text in ["{not json", "[]", '{"action": {"args": {}}}']:
        bad.write_text(text)
        assert main(["check", "--policy", str(policy), "--input", str(bad)]) == 2
        assert "execgate:" in capsys.readouterr().err
    assert main(["check", "--policy", str(policy), "--input", str(tmp_path / "missing")]) == 2


def test_policy_error_exit_2_with_location(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.rego"
    bad.write_text("package execgate\ndecision := {\n")
    assert main(["check", "--policy", str(bad), "--input", str(_input(tmp_path, "a"))]) == 2
    assert f"{bad}:" in capsys.readouterr().err


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "execgate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_python_m_and_stdin(policy: pathlib.Path, tmp_path: pathlib.Path) -> None:
    doc = _input(tmp_path, "alice").read_text()
    r = _run("check", "--policy", str(policy), "--input", "-", stdin=doc)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["allowed"] is True
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"execgate {execgate.__version__}"


def test_agent_demo_runs_a_real_agent_offline() -> None:
    pytest.importorskip("langchain")
    r = _run("demo")
    assert r.returncode == 0, r.stderr
    assert "a create_agent run" in r.stdout
    assert "a hostile argument type: fs.read needs a string path" in r.stdout
    assert "limit_hit=cpu" in r.stdout
    assert "not in the allowlist" in r.stdout and "forbidden pattern" in r.stdout
    assert "'Card [card:…1111], exp 09/27'" in r.stdout  # the tool got the masked body
    assert "budget exceeded: mail:ops-bot has spent 2 of 2" in r.stdout
    assert "17 records (6 allowed, 5 denied, 6 completions)" in r.stdout and ": VALID" in r.stdout


def test_demo_runs_offline_and_shows_denials() -> None:
    r = _run("demo", "--classic")
    assert r.returncode == 0, r.stderr
    assert "\033[" not in r.stdout  # no colour when not a TTY
    assert "contains '..'" in r.stdout
    assert "not in the allowlist" in r.stdout
    assert "forbidden pattern" in r.stdout
    assert "denied tool bodies never ran" in r.stdout
    assert "14 records (4 allowed, 6 denied, 4 completions)" in r.stdout
    assert "limit cpu hit" in r.stdout
    assert ": VALID" in r.stdout


def test_console_script_installed() -> None:
    exe = pathlib.Path(sys.executable).with_name("execgate")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "execgate" in r.stdout


def test_keygen_verify_and_log_show(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    assert (tmp_path / "keys" / "execgate.key").stat().st_mode & 0o777 == 0o600
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 2  # never overwrites
    key = execgate.SigningKey.from_pem(tmp_path / "keys" / "execgate.key")
    log = tmp_path / "audit.jsonl"
    with execgate.Gate(POLICY, key=key, audit=log) as gate:
        d = gate.check("fs.read", principal={"id": "alice"})
        assert d.receipt is not None
        gate.record_outcome(d.receipt, output="x")
        gate.check("fs.read", principal={"id": "bob"})
    capsys.readouterr()
    pub = str(tmp_path / "keys" / "execgate.pub")
    assert main(["verify", str(log), "--key", pub]) == 0
    out = capsys.readouterr().out
    assert "3 records (1 allowed, 1 denied, 1 completions" in out and "VALID" in out
    assert main(["verify", str(log), "--keyring", str(tmp_path / "keys")]) == 0
    capsys.readouterr()
    assert main(["log", "show", str(log)]) == 0
    shown = capsys.readouterr().out
    assert "ALLOW fs.read by alice" in shown and "DENY  fs.read by bob" in shown
    assert "completion" in shown
    # Tampered: exit 1 with the line; usage errors: exit 2.
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + lines[2])
    assert main(["verify", str(log), "--key", pub]) == 1
    assert "INVALID at line 2: sequence gap" in capsys.readouterr().out
    assert main(["verify", str(log)]) == 2
    assert main(["verify", str(tmp_path / "missing.jsonl"), "--key", pub]) == 2
    assert main(["verify", str(log), "--key", str(tmp_path / "nokey.pub")]) == 2


RUN_POLICY = """package execgate
default decision := {"allow": false, "reasons": ["only echo and sh"]}
decision := {"allow": true} if input.action.args.argv[0] in {"/bin/echo", "/bin/sh"}
"""


def test_run_gates_sandboxes_and_records(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "run.rego"
    policy.write_text(RUN_POLICY)
    key = execgate.SigningKey.generate()
    key.to_pem(tmp_path / "k.pem")
    log = tmp_path / "audit.jsonl"
    base = ["run", "--policy", str(policy), "--key", str(tmp_path / "k.pem"), "--log", str(log)]
    r = _run(*base, "--", "/bin/echo", "hello")
    assert r.returncode == 0 and r.stdout == "hello\n", r.stderr
    r = _run(*base, "--", "/bin/sh", "-c", "exit 7")
    assert r.returncode == 7
    r = _run(*base, "--cpu", "1", "--", "/bin/sh", "-c", "while :; do :; done")
    assert r.returncode == 128 + 9 or r.returncode == 128 + 24
    assert "limit hit: cpu" in r.stderr
    r = _run(*base, "--", "/bin/rm", "-rf", str(tmp_path))
    assert r.returncode == 126 and "only echo and sh" in r.stderr
    assert policy.exists()
    report = execgate.verify_log(log, key.verify_key)
    assert report.ok and (report.allowed, report.denied, report.completions) == (3, 1, 3)
    assert (
        _run(*base[:3], "--log", str(log), "--", "/bin/echo").returncode == 2
    )  # --log needs --key


def test_replay_reports_changed_decisions(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = 'package execgate\ndecision := {"allow": input.action.args.path != "/secret", "reasons": []}\n'
    new = tmp_path / "new.rego"
    new.write_text(
        'package execgate\ndecision := {"allow": startswith(input.action.args.path, "/workspace/"), '
        '"reasons": ["only /workspace/"]}\n'
    )
    log = tmp_path / "audit.jsonl"
    with execgate.Gate(
        old, key=execgate.SigningKey.generate(), audit=log, record_input=True
    ) as gate:
        gate.check("fs.read", {"path": "/workspace/a"})
        gate.check("fs.read", {"path": "/etc/passwd"})
        gate.check("fs.read", {"path": "/secret"})
    assert main(["replay", str(log), "--policy", str(new)]) == 1
    out = capsys.readouterr().out
    assert "line 2: fs.read by None: allow -> deny" in out
    assert "replayed 3 decisions" in out and "1 would change between allow and deny" in out
    same = tmp_path / "same.rego"
    same.write_text(old)
    assert main(["replay", str(log), "--policy", str(same)]) == 0
    # Without recorded inputs there is nothing to replay: a usage error, not a pass.
    bare = tmp_path / "bare.jsonl"
    with execgate.Gate(old, key=execgate.SigningKey.generate(), audit=bare) as gate:
        gate.check("fs.read", {"path": "/a"})
    assert main(["replay", str(bare), "--policy", str(same)]) == 2

    # Inputs stay out of logs by default.
    def payloads(path: pathlib.Path) -> str:
        return str(
            [execgate.Receipt.from_json(line).payload for line in path.read_text().splitlines()]
        )

    assert "/a" not in payloads(bare) and "/etc/passwd" in payloads(log)
