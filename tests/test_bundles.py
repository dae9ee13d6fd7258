"""Signed OPA-format bundles: build, verify, load, refuse (issue 16)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator

import pytest

import execgate
from execgate._core import Bundle

POLICY = """package execgate
import rego.v1
default decision := false
decision if input.action.name in data.app.allowed
"""


def _tree(root: pathlib.Path, allowed: list[str]) -> pathlib.Path:
    (root / "app").mkdir(parents=True, exist_ok=True)
    (root / "execgate.rego").write_text(POLICY)
    (root / "app" / "data.json").write_text(json.dumps({"allowed": allowed}))
    return root


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    key = execgate.SigningKey.generate()
    priv, pub = tmp_path / "bundle.key", tmp_path / "bundle.pub"
    key.to_pem(priv)
    key.verify_key.to_pem(pub)
    return priv, pub


def _build(src: pathlib.Path, priv: pathlib.Path, out: pathlib.Path, revision: str) -> None:
    cli = [sys.executable, "-m", "execgate", "bundle", "build", str(src)]
    done = subprocess.run(
        [*cli, "--key", str(priv), "--out", str(out), "--revision", revision],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"revision {revision}" in done.stdout


def _members(path: pathlib.Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {
            m.name: f.read()
            for m in tar.getmembers()
            if m.isfile() and (f := tar.extractfile(m)) is not None
        }


def _write(path: pathlib.Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _opa_hash(value: object) -> str:
    """OPA's structured-file hash, written from its documentation: keys sorted,
    no whitespace, no HTML escaping."""
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


@pytest.fixture
def built(
    tmp_path: pathlib.Path, keys: tuple[pathlib.Path, pathlib.Path]
) -> tuple[pathlib.Path, pathlib.Path]:
    out = tmp_path / "bundle.tar.gz"
    _build(_tree(tmp_path / "src", ["fs.read"]), keys[0], out, "v1")
    return out, keys[1]


def test_built_bundle_loads_and_receipts_record_the_revision(
    tmp_path: pathlib.Path, built: tuple[pathlib.Path, pathlib.Path]
) -> None:
    out, pub = built
    gate = execgate.Gate(
        bundle=out, bundle_key=pub, key=execgate.SigningKey.generate(), audit=tmp_path / "a.log"
    )
    assert gate.policy_revision == "v1"
    allowed = gate.check("fs.read")
    assert allowed.allowed and not gate.check("fs.write").allowed
    assert allowed.receipt is not None
    policy = allowed.receipt.payload["policy"]
    assert policy["revision"] == "v1" and policy["sha256"] == gate.policy_digest
    plain = execgate.Gate(POLICY, data={"app": {"allowed": []}}, key=execgate.SigningKey.generate())
    receipt = plain.check("x").receipt
    assert receipt is not None and "revision" not in receipt.payload["policy"]


def test_layout_is_opas(built: tuple[pathlib.Path, pathlib.Path]) -> None:
    out, pub = built
    members = _members(out)
    assert set(members) == {".signatures.json", ".manifest", "execgate.rego", "app/data.json"}
    manifest = json.loads(members[".manifest"])
    assert manifest == {"revision": "v1", "roots": [""]}
    signatures = json.loads(members[".signatures.json"])
    assert list(signatures) == ["signatures"] and len(signatures["signatures"]) == 1
    header_b64, payload_b64, sig_b64 = signatures["signatures"][0].split(".")
    header = json.loads(_b64url(header_b64))
    assert header["alg"] == "EdDSA" and header["kid"] == execgate.VerifyKey.from_pem(pub).kid
    payload = json.loads(_b64url(payload_b64))
    files = {f["name"]: f for f in payload["files"]}
    assert set(files) == set(members) - {".signatures.json"}
    assert all(f["algorithm"] == "SHA-256" for f in files.values())
    # Rego is hashed as bytes, JSON documents over their value, as OPA does.
    assert files["execgate.rego"]["hash"] == hashlib.sha256(members["execgate.rego"]).hexdigest()
    assert files["app/data.json"]["hash"] == _opa_hash({"allowed": ["fs.read"]})
    assert files[".manifest"]["hash"] == _opa_hash(manifest)
    # The JWT is plain EdDSA over header.payload: stock Ed25519 code verifies it.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = execgate.VerifyKey.from_pem(pub).to_bytes()
    Ed25519PublicKey.from_public_bytes(raw).verify(
        _b64url(sig_b64), f"{header_b64}.{payload_b64}".encode()
    )


def test_opa_style_names_with_a_leading_slash_load(
    tmp_path: pathlib.Path, built: tuple[pathlib.Path, pathlib.Path]
) -> None:
    out, pub = built
    # OPA's own tarballs name entries "/data.json"; reformatted JSON keeps its hash.
    members = {f"/{k}": v for k, v in _members(out).items()}
    members["/app/data.json"] = b'{ "allowed" : [ "fs.read" ] }\n'
    _write(tmp_path / "opa.tar.gz", members)
    assert Bundle.read(tmp_path / "opa.tar.gz", execgate.VerifyKey.from_pem(pub)).revision == "v1"


def _variant(members: dict[str, bytes], kind: str) -> dict[str, bytes]:
    changed = dict(members)
    if kind == "tampered":
        changed["app/data.json"] = json.dumps({"allowed": ["fs.read", "fs.write"]}).encode()
    elif kind == "extra":
        changed["backdoor.rego"] = b"package execgate\ndecision := true\n"
    elif kind == "missing":
        del changed["app/data.json"]
    elif kind == "unsigned":
        del changed[".signatures.json"]
    elif kind == "traversal":
        changed["../escape.rego"] = b"package x\n"
    return changed


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("tampered", execgate.SignatureError),
        ("extra", execgate.SignatureError),
        ("missing", execgate.SignatureError),
        ("unsigned", execgate.SignatureError),
        ("wrong key", execgate.SignatureError),
        ("traversal", execgate.PolicyError),
        ("not a bundle", execgate.PolicyError),
    ],
)
def test_bad_bundles_are_refused_and_the_old_policy_stays(
    tmp_path: pathlib.Path,
    built: tuple[pathlib.Path, pathlib.Path],
    kind: str,
    error: type[Exception],
) -> None:
    out, pub = built
    live = tmp_path / "live.tar.gz"
    live.write_bytes(out.read_bytes())
    gate = execgate.Gate(bundle=live, bundle_key=pub)
    before = gate.policy_digest
    if kind == "wrong key":
        other = tmp_path / "other.key"
        execgate.SigningKey.generate().to_pem(other)
        _build(_tree(tmp_path / "src2", ["fs.read", "fs.write"]), other, live, "v2")
    elif kind == "not a bundle":
        live.write_bytes(b"<html>502 Bad Gateway</html>")
    else:
        _write(live, _variant(_members(out), kind))
    with pytest.raises(error):
        gate.reload()
    assert gate.policy_digest == before and gate.policy_revision == "v1"
    assert not gate.check("fs.write").allowed
    with pytest.raises(error):
        execgate.Gate(bundle=live, bundle_key=pub)  # never built on a bad bundle


def test_new_revision_is_picked_up_by_reload(
    tmp_path: pathlib.Path, keys: tuple[pathlib.Path, pathlib.Path]
) -> None:
    priv, pub = keys
    live = tmp_path / "live.tar.gz"
    _build(_tree(tmp_path / "src", ["fs.read"]), priv, live, "v1")
    gate = execgate.Gate(bundle=live, bundle_key=pub)
    assert not gate.check("fs.write").allowed
    _build(_tree(tmp_path / "src", ["fs.read", "fs.write"]), priv, live, "v2")
    gate.reload()
    assert gate.policy_revision == "v2" and gate.check("fs.write").allowed


def test_a_signed_bundle_that_does_not_compile_is_refused(
    tmp_path: pathlib.Path, keys: tuple[pathlib.Path, pathlib.Path]
) -> None:
    priv, pub = keys
    live = tmp_path / "live.tar.gz"
    _build(_tree(tmp_path / "src", ["fs.read"]), priv, live, "v1")
    gate = execgate.Gate(bundle=live, bundle_key=pub)
    broken = _tree(tmp_path / "broken", [])
    (broken / "execgate.rego").write_text("package execgate\ndecision := {\n")
    _build(broken, priv, live, "v2")
    with pytest.raises(execgate.PolicyError):
        gate.reload()
    assert gate.policy_revision == "v1" and gate.check("fs.read").allowed


def test_bundle_options_are_checked(built: tuple[pathlib.Path, pathlib.Path]) -> None:
    out, pub = built
    with pytest.raises(TypeError, match="public key"):
        execgate.Gate(bundle=out)
    with pytest.raises(TypeError, match="not both"):
        execgate.Gate(POLICY, bundle=out, bundle_key=pub)


class _BundleServer:
    """A local HTTP server for one bundle, with strong ETags and 304s; it
    counts requests and conditional hits, and can be made to fail."""

    def __init__(self, path: pathlib.Path) -> None:
        import http.server
        import threading

        self.path, self.requests, self.not_modified, self.down = path, 0, 0, False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server.down:
                    self.send_error(503)
                    return
                data = server.path.read_bytes()
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    server.not_modified += 1
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/bundle.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(
    tmp_path: pathlib.Path, keys: tuple[pathlib.Path, pathlib.Path]
) -> Iterator[tuple[_BundleServer, pathlib.Path, pathlib.Path]]:
    priv, pub = keys
    _build(_tree(tmp_path / "src", ["fs.read"]), priv, tmp_path / "served.tar.gz", "v1")
    server = _BundleServer(tmp_path / "served.tar.gz")
    yield server, priv, pub
    server.close()


def test_served_bundle_new_revision_and_304(
    tmp_path: pathlib.Path, served: tuple[_BundleServer, pathlib.Path, pathlib.Path]
) -> None:
    server, priv, pub = served
    cache = tmp_path / "cache" / "last-good.tar.gz"
    cache.parent.mkdir()
    gate = execgate.Gate(bundle=server.url, bundle_key=pub, bundle_cache=cache)
    assert gate.policy_revision == "v1" and cache.is_file()
    gate.reload()  # unchanged: a conditional GET answered 304
    assert server.not_modified == 1 and gate.policy_revision == "v1"
    _build(_tree(tmp_path / "src", ["fs.read", "fs.write"]), priv, server.path, "v2")
    gate.reload()
    assert gate.policy_revision == "v2" and gate.check("fs.write").allowed
    # A tampered bundle on the server is refused; v2 stays.
    members = _members(server.path)
    members["app/data.json"] = b'{"allowed": ["fs.read", "fs.write", "shell.exec"]}'
    _write(server.path, members)
    with pytest.raises(execgate.SignatureError):
        gate.reload()
    assert gate.policy_revision == "v2" and not gate.check("shell.exec").allowed
    # Restart with the server down: the cached last good bundle (v2) is used.
    server.down = True
    restarted = execgate.Gate(bundle=server.url, bundle_key=pub, bundle_cache=cache)
    assert restarted.policy_revision == "v2" and restarted.check("fs.write").allowed


def test_no_valid_bundle_ever_denies_everything_until_one_arrives(
    tmp_path: pathlib.Path, served: tuple[_BundleServer, pathlib.Path, pathlib.Path]
) -> None:
    import time

    server, _, pub = served
    server.down = True
    gate = execgate.Gate(bundle=server.url, bundle_key=pub, bundle_poll=0.05)
    try:
        d = gate.check("fs.read")
        assert not d.allowed and "no valid policy bundle" in d.reasons[0]
        assert gate.policy_revision is None
        server.down = False
        deadline = time.monotonic() + 10
        while gate.policy_revision is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gate.policy_revision == "v1" and gate.check("fs.read").allowed
    finally:
        gate.close()


def test_poller_keeps_the_old_policy_when_a_bad_bundle_is_served(
    tmp_path: pathlib.Path,
    served: tuple[_BundleServer, pathlib.Path, pathlib.Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import time

    server, _, pub = served
    gate = execgate.Gate(bundle=server.url, bundle_key=pub, bundle_poll=0.05)
    try:
        other = tmp_path / "other.key"
        execgate.SigningKey.generate().to_pem(other)
        _build(_tree(tmp_path / "evil", ["fs.read", "shell.exec"]), other, server.path, "evil")
        with caplog.at_level("WARNING", logger="execgate.bundle"):
            deadline = time.monotonic() + 10
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.05)
        assert caplog.records and "keeping the policy in force" in caplog.records[0].getMessage()
        assert gate.policy_revision == "v1" and not gate.check("shell.exec").allowed
    finally:
        gate.close()


def test_bundle_build_refuses_a_directory_without_policy(
    tmp_path: pathlib.Path, keys: tuple[pathlib.Path, pathlib.Path]
) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "b.tar.gz"
    cli = [sys.executable, "-m", "execgate", "bundle", "build", str(tmp_path / "empty")]
    done = subprocess.run(
        [*cli, "--key", str(keys[0]), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "no .rego file to bundle" in done.stderr
    assert not out.exists()


# -- RS256 / ES256: bundles as OPA's tooling signs them ----------------------------------------


def _opa_bundle(
    files: dict[str, bytes],
    sign: Callable[[bytes], bytes],
    alg: str,
    *,
    header: dict[str, object] | None = None,
    claims: dict[str, object] | None = None,
) -> bytes:
    """A bundle laid out as ``opa build --signing-alg ALG`` writes one: entries
    named from the root ("/policy.rego"), and a ``.signatures.json`` with one
    JWT whose header is ``{"alg", "kid"}`` and whose payload lists every other
    file ``{"name", "hash", "algorithm": "SHA-256"}`` (names without the leading
    slash) plus the deprecated ``keyid`` claim (OPA's ``bundle/sign.go``)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    listed = []
    for name, data in files.items():
        structured = name.rsplit("/", 1)[-1] in ("data.json", ".manifest")
        digest = _opa_hash(json.loads(data)) if structured else hashlib.sha256(data).hexdigest()
        listed.append({"name": name, "hash": digest, "algorithm": "SHA-256"})
    head = header if header is not None else {"alg": alg, "kid": "global_key"}
    payload = {"files": listed, "keyid": "global_key", **(claims or {})}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(payload).encode())}"
    token = f"{signing_input}.{b64(sign(signing_input.encode()))}"
    buf = io.BytesIO()
    members = {".signatures.json": json.dumps({"signatures": [token]}).encode(), **files}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo("/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _opa_files(allowed: list[str], revision: str = "opa-1") -> dict[str, bytes]:
    return {
        ".manifest": json.dumps({"revision": revision, "roots": [""]}).encode(),
        "execgate.rego": POLICY.encode(),
        "app/data.json": json.dumps({"allowed": allowed}).encode(),
    }


def _rsa() -> tuple[Callable[[bytes], bytes], bytes]:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256()), pem


def _p256() -> tuple[Callable[[bytes], bytes], bytes]:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def sign(data: bytes) -> bytes:  # JWS carries ES256 as r || s, 32 bytes each
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign, pem


@pytest.mark.parametrize(("alg", "keygen"), [("RS256", _rsa), ("ES256", _p256)])
def test_opa_signed_rs256_and_es256_bundles_load_and_tampering_is_refused(
    tmp_path: pathlib.Path, alg: str, keygen: Callable[[], tuple[Callable[[bytes], bytes], bytes]]
) -> None:
    sign, pem = keygen()
    (tmp_path / "opa.pub").write_bytes(pem)
    key = execgate.BundleKey.from_pem(pem)
    assert key.algorithm == alg
    live = tmp_path / "live.tar.gz"
    live.write_bytes(_opa_bundle(_opa_files(["fs.read"]), sign, alg))
    gate = execgate.Gate(bundle=live, bundle_key=tmp_path / "opa.pub")  # a PEM path
    assert gate.policy_revision == "opa-1" and gate.check("fs.read").allowed
    # A new revision signed the same way is picked up.
    live.write_bytes(_opa_bundle(_opa_files(["fs.read", "fs.write"], "opa-2"), sign, alg))
    gate.reload()
    assert gate.policy_revision == "opa-2" and gate.check("fs.write").allowed
    # Tampered, extra and missing files are refused; opa-2 stays.
    signed = {k.lstrip("/"): v for k, v in _members(live).items()}
    tampered = {**signed, "app/data.json": b'{"allowed": ["shell.exec"]}'}
    for variant in (tampered, _variant(signed, "extra"), _variant(signed, "missing")):
        _write(live, variant)
        with pytest.raises(execgate.SignatureError):
            gate.reload()
        assert gate.policy_revision == "opa-2" and not gate.check("shell.exec").allowed
    # Signed by another key of the same type.
    other, _ = keygen()
    live.write_bytes(_opa_bundle(_opa_files(["shell.exec"], "evil"), other, alg))
    with pytest.raises(execgate.SignatureError, match="does not verify"):
        gate.reload()
    assert gate.policy_revision == "opa-2"


def test_no_algorithm_confusion(tmp_path: pathlib.Path) -> None:
    """The algorithm follows the key, never the token: ``none``, HS256 keyed
    with the public key PEM, a token of another asymmetric algorithm, each refused."""
    import hmac

    rsa_sign, rsa_pem = _rsa()
    ec_sign, ec_pem = _p256()
    ed = execgate.SigningKey.generate()
    ed_pem = ed.verify_key.to_pem()
    assert ed_pem is not None
    files = _opa_files(["shell.exec"], "forged")
    forged = {
        # HS256 with the (public) RSA key's PEM as the HMAC secret: the classic confusion.
        "hs256 with the public key": (
            _opa_bundle(files, lambda d: hmac.new(rsa_pem, d, "sha256").digest(), "HS256"),
            rsa_pem,
        ),
        "none": (_opa_bundle(files, lambda d: b"", "none"), rsa_pem),
        "RS256 token, Ed25519 key": (_opa_bundle(files, rsa_sign, "RS256"), ed_pem),
        "ES256 token, RSA key": (_opa_bundle(files, ec_sign, "ES256"), rsa_pem),
        "RS256 token, P-256 key": (_opa_bundle(files, rsa_sign, "RS256"), ec_pem),
        # An RS256 signature relabelled as ES256 for a P-256 key.
        "relabelled": (
            _opa_bundle(files, rsa_sign, "RS256", header={"alg": "ES256", "kid": "k"}),
            ec_pem,
        ),
    }
    for what, (data, pem) in forged.items():
        with pytest.raises(execgate.SignatureError) as refused:
            Bundle.from_bytes(data, execgate.BundleKey.from_pem(pem))
        assert re.search(r"is not the key's|does not verify", str(refused.value)), what
    # A scoped token is refused (OPA compares the scope with its configured one: none here).
    scoped = _opa_bundle(_opa_files(["fs.read"]), rsa_sign, "RS256", claims={"scope": "write"})
    with pytest.raises(execgate.SignatureError, match="scope"):
        Bundle.from_bytes(scoped, execgate.BundleKey.from_pem(rsa_pem))
    # An execgate key given as a VerifyKey verifies EdDSA only.
    with pytest.raises(execgate.SignatureError, match="is not the key's"):
        Bundle.from_bytes(_opa_bundle(files, rsa_sign, "RS256"), ed.verify_key)


def test_bundle_keys_refuse_what_is_not_a_usable_public_key(tmp_path: pathlib.Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def public(key: object) -> bytes:
        return key.public_key().public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(execgate.ExecgateError, match="at least 2048"):
        execgate.BundleKey.from_pem(public(small))
    with pytest.raises(execgate.ExecgateError, match="only P-256"):
        execgate.BundleKey.from_pem(public(ec.generate_private_key(ec.SECP384R1())))
    private = small.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(execgate.ExecgateError, match="private key"):
        execgate.BundleKey.from_pem(private)
    # PKCS#1 "RSA PUBLIC KEY" is accepted too (OPA accepts it).
    pkcs1 = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    )
    assert execgate.BundleKey.from_pem(pkcs1).algorithm == "RS256"


# -- bundle_max_age: a stale policy denies --------------------------------------------------------


def test_a_file_bundle_older_than_max_age_denies_until_reloaded(
    built: tuple[pathlib.Path, pathlib.Path],
) -> None:
    import time

    out, pub = built
    gate = execgate.Gate(bundle=out, bundle_key=pub, bundle_max_age=0.3)
    assert gate.check("fs.read").allowed
    time.sleep(0.4)
    stale = gate.check("fs.read")
    assert not stale.allowed and stale.error == "stale"
    assert str(out) in stale.reasons[0] and '(revision "v1")' in stale.reasons[0]
    assert "bundle_max_age" in stale.reasons[0]
    gate.reload()  # a successful load confirms it again
    assert gate.check("fs.read").allowed


def test_a_served_bundle_stays_fresh_while_polls_confirm_it_and_goes_stale_when_they_fail(
    tmp_path: pathlib.Path, served: tuple[_BundleServer, pathlib.Path, pathlib.Path]
) -> None:
    import time

    server, _, pub = served
    cache = tmp_path / "cache.tar.gz"
    gate = execgate.Gate(
        bundle=server.url, bundle_key=pub, bundle_cache=cache, bundle_poll=0.05, bundle_max_age=0.5
    )
    try:
        time.sleep(0.8)  # past max age, but every poll got a 304: still current
        assert server.not_modified >= 3 and gate.check("fs.read").allowed
        server.down = True
        deadline = time.monotonic() + 10
        while gate.check("fs.read").allowed and time.monotonic() < deadline:
            time.sleep(0.05)
        stale = gate.check("fs.read")
        assert stale.error == "stale" and server.url in stale.reasons[0]
        assert gate.policy_revision == "v1"  # the policy is kept, it just does not decide
        server.down = False
        deadline = time.monotonic() + 10
        while not gate.check("fs.read").allowed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gate.check("fs.read").allowed
    finally:
        gate.close()
    # Restart from the cache with the server down: the cache is as old as its last
    # confirmation, so a cache older than max age denies at once.
    server.down = True
    restarted = execgate.Gate(
        bundle=server.url, bundle_key=pub, bundle_cache=cache, bundle_max_age=60
    )
    assert restarted.check("fs.read").allowed
    old = time.time() - 120
    os.utime(cache, (old, old))
    restarted = execgate.Gate(
        bundle=server.url, bundle_key=pub, bundle_cache=cache, bundle_max_age=60
    )
    denied = restarted.check("fs.read")
    assert denied.error == "stale" and "last confirmed current 12" in denied.reasons[0]


def test_max_age_options_are_checked(
    built: tuple[pathlib.Path, pathlib.Path],
    served: tuple[_BundleServer, pathlib.Path, pathlib.Path],
) -> None:
    out, pub = built
    with pytest.raises(TypeError, match="needs bundle"):
        execgate.Gate(POLICY, bundle_max_age=5)
    for bad in (0, -1, float("nan")):
        with pytest.raises(execgate.ConfigurationError, match="bundle_max_age"):
            execgate.Gate(bundle=out, bundle_key=pub, bundle_max_age=bad)
    server, _, served_pub = served
    with pytest.raises(execgate.ConfigurationError, match="must exceed bundle_poll"):
        execgate.Gate(bundle=server.url, bundle_key=served_pub, bundle_poll=10, bundle_max_age=10)


def test_a_gate_that_never_had_a_bundle_is_stale_from_the_start(
    served: tuple[_BundleServer, pathlib.Path, pathlib.Path],
) -> None:
    server, _, pub = served
    server.down = True
    gate = execgate.Gate(bundle=server.url, bundle_key=pub, bundle_max_age=60)
    denied = gate.check("fs.read")
    assert denied.error == "stale" and "never confirmed current" in denied.reasons[0]
    server.down = False
    gate.reload()  # the first valid bundle is confirmed as it is installed
    assert gate.policy_revision == "v1" and gate.check("fs.read").allowed
