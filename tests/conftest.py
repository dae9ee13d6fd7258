from __future__ import annotations

import datetime as dt
import os
import pathlib
import subprocess
from collections.abc import Iterator

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


def mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tiny_fs(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A 64 KiB tmpfs (root only): a disk that fills, or is remounted read-only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or not mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)):
        pytest.skip("needs root and tmpfs mounts")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)
