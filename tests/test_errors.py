"""The one mapping from the core's errors to the Python exception hierarchy:
each kind of failure raises its class, with its structured fields."""

from __future__ import annotations

import pathlib

import pytest

import execgate
from execgate import Sandbox


def test_policy_errors_carry_file_and_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.rego"
    bad.write_text("package execgate\n\ndecision if {\n")
    with pytest.raises(execgate.PolicyError) as info:
        execgate.Gate(bad)
    assert info.value.file == str(bad) and info.value.line is not None


def test_bad_values_are_configuration_errors() -> None:
    with pytest.raises(execgate.ConfigurationError) as info:
        execgate.Gate("package execgate\ndecision := true\n", mode="loose")  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError) and "mode" in str(info.value)


def test_unconvertible_arguments_name_the_argument() -> None:
    gate = execgate.Gate("package execgate\ndecision := true\n")
    with pytest.raises(execgate.ArgumentError) as info:
        gate.check("x", {"items": [1, object()]})
    assert info.value.argument == "args.items[1]" and isinstance(info.value, TypeError)


def test_key_and_signature_errors(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    with pytest.raises(execgate.SignatureError) as info:
        execgate.SigningKey.from_pem(bad)
    assert info.value.path == str(bad)
    with pytest.raises(execgate.SignatureError):
        execgate.Receipt.from_json('{"payloadType": "x", "payload": "!", "signatures": []}')


def test_sandbox_and_audit_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(execgate.SandboxError):
        Sandbox(cwd=tmp_path / "missing").run(["/bin/true"])
    target = tmp_path / "target.jsonl"
    target.write_text("")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with pytest.raises(execgate.AuditLogError) as info:
        execgate.AuditLog(link, execgate.SigningKey.generate())
    assert info.value.path == str(link)


def test_every_class_is_an_execgate_error() -> None:
    for cls in (
        execgate.ActionDenied,
        execgate.ApprovalRequired,
        execgate.ArgumentError,
        execgate.AuditLogError,
        execgate.ConfigurationError,
        execgate.IsolatedError,
        execgate.PolicyError,
        execgate.SandboxError,
        execgate.SignatureError,
    ):
        assert issubclass(cls, execgate.ExecgateError), cls
    assert issubclass(execgate.ActionDenied, PermissionError)
