"""The execgate pytest plugin (registered through the ``pytest11`` entry point).

Fixtures:

- ``execgate_key``: an ephemeral :class:`SigningKey`.
- ``execgate_log``: a temporary audit log path; at teardown the log is verified
  with ``execgate_key`` and a broken chain fails the test.
- ``execgate_gate``: a :class:`Gate` over the policy named by the
  ``@pytest.mark.execgate(policy=..., data=..., entrypoint=...)`` marker, or by
  the ``execgate_policy`` / ``execgate_data`` / ``execgate_entrypoint`` ini
  options (paths relative to the rootdir), receipting into ``execgate_log``.
- ``execgate_receipts``: the receipts written to ``execgate_log`` so far.

Rego unit tests: every ``test_*`` rule in ``*_test.rego`` files is collected as
its own test item (the ``opa test`` convention) and evaluated with the policy
files beside it (or ``execgate_policy``) and ``execgate_data``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from execgate import _core
from execgate._core import Receipt, SigningKey
from execgate.gate import Gate

__all__ = ["ReceiptLog"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "execgate_policy",
        "policy files or directories for execgate_gate and Rego tests",
        type="paths",
        default=[],
    )
    parser.addini("execgate_data", "JSON/YAML data files for the policy", type="paths", default=[])
    parser.addini(
        "execgate_entrypoint", "rule queried by execgate_gate", default="data.execgate.decision"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "execgate(policy, data=None, entrypoint=None): the policy of the execgate_gate fixture",
    )


class ReceiptLog:
    """The receipts in an audit log, read afresh on each access."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[Receipt]:
        if not self.path.exists():
            return iter(())
        return iter([Receipt.from_json(line) for line in self.path.read_text().splitlines()])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def of_kind(self, kind: str) -> list[Receipt]:
        return [r for r in self if r.kind == kind]


@pytest.fixture
def execgate_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def execgate_log(tmp_path: pathlib.Path, execgate_key: SigningKey) -> Iterator[pathlib.Path]:
    path = tmp_path / "execgate-audit.jsonl"
    yield path
    if path.exists():
        report = _core.verify(os.fspath(path), [execgate_key.verify_key], None)
        if not report.ok:
            pytest.fail(f"audit log {path} does not verify: line {report.line}: {report.reason}")


@pytest.fixture
def execgate_gate(
    request: pytest.FixtureRequest, execgate_key: SigningKey, execgate_log: pathlib.Path
) -> Iterator[Gate]:
    marker = request.node.get_closest_marker("execgate")
    config = request.config
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        options.setdefault("policy", marker.args[0])
    policy = options.pop("policy", None) or [os.fspath(p) for p in config.getini("execgate_policy")]
    if not policy:
        raise pytest.UsageError(
            "execgate_gate needs a policy: @pytest.mark.execgate(policy=...) "
            "or the execgate_policy ini option"
        )
    data = (
        options.pop("data", None) or [os.fspath(p) for p in config.getini("execgate_data")] or None
    )
    options.setdefault("entrypoint", config.getini("execgate_entrypoint"))
    gate = Gate(policy, data=data, key=execgate_key, audit=execgate_log, **options)
    yield gate
    gate.close()


@pytest.fixture
def execgate_receipts(execgate_log: pathlib.Path) -> ReceiptLog:
    return ReceiptLog(execgate_log)


# --- Rego unit tests ------------------------------------------------------------


def pytest_collect_file(
    parent: pytest.Collector, file_path: pathlib.Path
) -> pytest.Collector | None:
    if file_path.name.endswith("_test.rego"):
        return RegoTestFile.from_parent(parent, path=file_path)
    return None


class RegoTestFile(pytest.File):
    def _sources(self) -> dict[str, list[str]]:
        policy = [os.fspath(p) for p in self.config.getini("execgate_policy")] or [
            os.fspath(self.path.parent)
        ]
        data = [os.fspath(p) for p in self.config.getini("execgate_data")]
        return {"paths": [*policy, os.fspath(self.path)], "data_files": data}

    def collect(self) -> Iterator[pytest.Item]:
        sources = self._sources()
        for file, rule in _core.rego_tests(
            paths=sources["paths"], data_files=sources["data_files"]
        ):
            if os.path.samefile(file, self.path):
                yield RegoTestItem.from_parent(
                    self, name=rule.rsplit(".", 1)[-1], rule=rule, sources=sources
                )


class RegoTestFailure(Exception):
    pass


class RegoTestItem(pytest.Item):
    def __init__(self, *, rule: str, sources: dict[str, list[str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rule = rule
        self.sources = sources

    def runtest(self) -> None:
        status, detail = _core.run_rego_test(
            self.rule, paths=self.sources["paths"], data_files=self.sources["data_files"]
        )
        if status != "passed":
            raise RegoTestFailure(f"{status}: {detail}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, RegoTestFailure):
            return f"Rego test {self.rule} {excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[pathlib.Path, int | None, str]:
        return self.path, None, f"rego: {self.rule}"
