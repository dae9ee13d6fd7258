"""A verifier written from the README's format description, using only the
`cryptography` package: no execgate code checks the log here."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("cryptography")

# The same code as the README's "Verify a log without execgate" section.
VERIFIER = textwrap.dedent(
    """
    import base64, hashlib, json, sys
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    def verify(log_path, pub_pem):
        key, prev, seq = load_pem_public_key(pub_pem), None, 0
        for line in open(log_path, "rb"):
            env = json.loads(line)
            body = base64.b64decode(env["payload"])
            t = env["payloadType"].encode()
            pae = b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)
            key.verify(base64.b64decode(env["signatures"][0]["sig"]), pae)  # raises if bad
            payload = json.loads(body)
            seq += 1
            assert payload["seq"] == seq and payload["prev"] == prev, "chain broken"
            prev = hashlib.sha256(body).hexdigest()
        return seq

    print(verify(sys.argv[1], open(sys.argv[2], "rb").read()))
    """
)


def run_verifier(log: pathlib.Path, pub: pathlib.Path) -> subprocess.CompletedProcess[str]:
    # The verifier runs in its own interpreter and imports nothing from execgate.
    return subprocess.run(
        [sys.executable, "-I", "-c", VERIFIER, str(log), str(pub)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_third_party_verifier_accepts_a_real_log_and_rejects_tampering(
    tmp_path: pathlib.Path,
) -> None:
    import execgate

    key = execgate.SigningKey.generate()
    key.verify_key.to_pem(tmp_path / "k.pub")
    log = tmp_path / "audit.jsonl"
    with execgate.Gate(
        'package execgate\ndecision := input.action.name == "ok"\n', key=key, audit=log
    ) as gate:

        @gate.guard(action="ok")
        def tool(x: int) -> int:
            return x * 2

        for i in range(5):
            tool(i)
            gate.check("no", {"i": i})
    r = run_verifier(log, tmp_path / "k.pub")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 15  # 5 authorizations, 5 completions, 5 denials
    # A deleted line breaks the chain for the third party too.
    lines = log.read_bytes().splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_bytes(b"".join(lines[:4] + lines[5:]))
    r = run_verifier(tmp_path / "cut.jsonl", tmp_path / "k.pub")
    assert r.returncode != 0 and "chain broken" in r.stderr
    # A different key fails on the first signature.
    other = execgate.SigningKey.generate()
    other.verify_key.to_pem(tmp_path / "other.pub")
    r = run_verifier(log, tmp_path / "other.pub")
    assert r.returncode != 0 and "InvalidSignature" in r.stderr
