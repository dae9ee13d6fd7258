"""A full disk under a running gate (issue 13): the log lives on a 2 MiB tmpfs.

While the disk is full every decision is denied with error="audit" (nothing
runs that is not recorded), no partial line is left behind, the log verifies,
and decisions are recorded again once there is space.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest

import execgate
from execgate import SigningKey

POLICY = "package execgate\ndecision := true\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def tiny_disk(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def fill(path: pathlib.Path) -> None:
    """Writes `path` until the disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("signing", ["record", "checkpoint"])
def test_full_disk_denies_then_resumes(tiny_disk: pathlib.Path, signing: str) -> None:
    key = SigningKey.generate()
    path = tiny_disk / "log.jsonl"
    log = execgate.AuditLog(path, key, signing=signing, checkpoint_every=5)
    recorded: list[str] = []
    with execgate.Gate(POLICY, audit=log) as gate:
        for i in range(20):
            d = gate.check("ok", {"i": i})
            assert d.allowed and d.receipt is not None
            recorded.append(d.receipt.id)
        filler = tiny_disk / "filler"
        fill(filler)
        # The log's last page may hold a few more records; then every one is denied.
        full = [gate.check("ok", {"i": i}) for i in range(30)]
        fitted = next(i for i, d in enumerate(full) if not d.allowed)
        assert fitted <= 8, fitted
        recorded += [d.receipt.id for d in full[:fitted] if d.receipt is not None]
        for d in full[fitted:]:
            assert not d.allowed, "a decision was allowed with no room to record it"
            assert d.error == "audit", d.reasons
            assert any("cannot append" in r or "space" in r for r in d.reasons), d.reasons
        # Nothing half-written: every line is a whole record.
        assert path.read_bytes().endswith(b"\n")
        filler.unlink()
        for i in range(20):
            d = gate.check("ok", {"i": i})
            assert d.allowed, d.reasons
            assert d.receipt is not None
            recorded.append(d.receipt.id)
    r = execgate.verify_log(path, key.verify_key)
    assert r.ok, r.reason
    # The refused calls were never recorded as run.
    assert r.allowed == 40 + fitted and r.denied == 0, (r.allowed, fitted)
    lines = path.read_bytes().splitlines()
    ids = {json.loads(base64.b64decode(json.loads(x)["payload"]))["id"] for x in lines}
    assert set(recorded) <= ids
