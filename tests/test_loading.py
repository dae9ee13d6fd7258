"""Loading policies and data; PolicyError carries file, line and column."""

from __future__ import annotations

import json
import pathlib

import pytest

import execgate

DECISION = (
    'package execgate\ndecision := {"allow": input.action.args.host in data.hosts, "reasons": []}\n'
)


def test_directory_is_loaded_recursively_and_test_files_skipped(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.rego").write_text("package execgate\ndecision := data.execgate.lib.ok\n")
    (tmp_path / "sub" / "lib.rego").write_text("package execgate.lib\nok := true\n")
    (tmp_path / "sub" / "lib_test.rego").write_text(
        "package execgate.lib\ntest_x if { syntax error\n"
    )
    (tmp_path / "notes.txt").write_text("not rego")
    assert execgate.Gate(tmp_path).check("x").allowed
    assert execgate.Gate.from_path(str(tmp_path)).check("x").allowed


def test_data_from_dicts_json_and_yaml_is_merged(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"hosts": ["a.com"]}))
    (tmp_path / "b.yaml").write_text("limits:\n  max: 3\n")
    policy = DECISION + "max := data.limits.max\nextra := data.extra\n"
    gate = execgate.Gate(policy, data=[tmp_path / "a.json", str(tmp_path / "b.yaml"), {"extra": 1}])
    assert gate.check("x", {"host": "a.com"}).allowed
    assert not gate.check("x", {"host": "b.com"}).allowed


def test_conflicting_data_is_a_policy_error() -> None:
    with pytest.raises(execgate.PolicyError):
        execgate.Gate(DECISION, data=[{"hosts": ["a"]}, {"hosts": ["b"]}])


@pytest.mark.parametrize(
    ("source", "line", "column"),
    [
        ("package execgate\n\ndecision if {\n  input.x ==\n}\n", 5, 1),
        ("package execgate\ndecision := undefined_fn(1)\n", 2, 25),
        ("package execgate\ndecision if {\n  x := 1\n  x := 2\n}\n", 3, 3),
    ],
)
def test_policy_error_has_file_line_and_column(
    tmp_path: pathlib.Path, source: str, line: int, column: int
) -> None:
    f = tmp_path / "bad.rego"
    f.write_text(source)
    with pytest.raises(execgate.PolicyError) as info:
        execgate.Gate(f)
    err = info.value
    assert err.file == str(f)
    assert (err.line, err.column) == (line, column), str(err)
    assert str(err).startswith(f"{f}:{line}:{column}: ")
    assert err.message and "\n" not in err.message


def test_missing_files_and_bad_data_are_policy_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(execgate.PolicyError) as info:
        execgate.Gate(tmp_path / "missing.rego")
    assert info.value.file == str(tmp_path / "missing.rego")
    (tmp_path / "empty").mkdir()
    with pytest.raises(execgate.PolicyError, match=r"no \.rego files"):
        execgate.Gate(tmp_path / "empty")
    (tmp_path / "d.json").write_text("{not json")
    with pytest.raises(execgate.PolicyError) as info:
        execgate.Gate(DECISION, data=tmp_path / "d.json")
    assert info.value.file == str(tmp_path / "d.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(execgate.PolicyError, match="must be a JSON object"):
        execgate.Gate(DECISION, data=tmp_path / "list.json")


def test_unknown_entrypoint_is_a_policy_error() -> None:
    with pytest.raises(execgate.PolicyError, match=r"data\.other\.decision"):
        execgate.Gate(DECISION, entrypoint="data.other.decision")


def test_custom_entrypoint() -> None:
    gate = execgate.Gate(
        'package authz\nallow if input.action.name == "ok"\n', entrypoint="data.authz.allow"
    )
    assert gate.check("ok").allowed
    assert gate.check("no").error == "undefined"


def test_policy_digest_covers_policy_and_data() -> None:
    a = execgate.Gate(DECISION, data={"hosts": ["a"]}).policy_digest
    assert a == execgate.Gate(DECISION, data={"hosts": ["a"]}).policy_digest
    assert a != execgate.Gate(DECISION, data={"hosts": ["b"]}).policy_digest
    assert a != execgate.Gate(DECISION + "\n# edit\n", data={"hosts": ["a"]}).policy_digest


def test_glob_match_is_not_available_and_says_so() -> None:
    with pytest.raises(execgate.PolicyError, match=r"Unknown function: 'glob\.match'") as info:
        execgate.Gate('package execgate\ndecision := glob.match("*", [], "x")\n')
    assert (info.value.line, info.value.column) == (2, 23)
