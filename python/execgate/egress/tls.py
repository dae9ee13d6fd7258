"""TLS interception for the egress proxy (``Egress(intercept_tls=True)``).

:class:`Interceptor` is one proxy's ephemeral certificate authority: an EC
P-256 key made in memory when the proxy starts (never written anywhere) and a
self-signed CA certificate valid for a day, constrained to sign end-entity
certificates only (``pathlen=0``). Its certificate, the only secretless part,
is written to ``bundle`` in a directory of its own that the sandboxed child
may read; the child's ``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``,
``CURL_CA_BUNDLE`` and ``NODE_EXTRA_CA_CERTS`` point at it, so the child (and
nothing else on the machine) trusts it. For each host a tool reaches through
``CONNECT``, a leaf certificate naming that host is minted and kept (bounded).
``ssl`` loads a chain only from files: a leaf's key and certificate are
written to a root-only directory, loaded and unlinked at once.

The proxy's own connections to the real servers verify their certificates
against the system's store plus ``Egress.upstream_ca`` (:func:`upstream_context`).

Needs ``cryptography`` (the extra ``execgate[egress-tls]``).
"""

from __future__ import annotations

import collections
import datetime as dt
import ipaddress
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Interceptor", "upstream_context"]

#: Leaf contexts kept per proxy (one per host; the oldest is dropped past it).
_CACHED_HOSTS = 256
_ALPN = ["http/1.1"]


def upstream_context(extra_anchors: Sequence[str | os.PathLike[str]] = ()) -> ssl.SSLContext:
    """How the proxy verifies a real server: the system's trust store, plus
    ``extra_anchors`` (PEM files); hostname checked, TLS 1.2 or newer."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in extra_anchors:
        ctx.load_verify_locations(cafile=os.fspath(path))
    ctx.set_alpn_protocols(_ALPN)
    return ctx


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class Interceptor:
    """One proxy's ephemeral CA and the server contexts it mints per host.
    :meth:`close` removes its files."""

    def __init__(self) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        self._not_before = now - dt.timedelta(hours=1)
        self._not_after = now + dt.timedelta(days=1)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._issuer = _name(f"execgate egress CA (ephemeral, pid {os.getpid()})")
        public = self._key.public_key()
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(self._issuer)
            .issuer_name(self._issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
        # The bundle's directory is the child's to read; the leaf files' is root's.
        self.directory = tempfile.mkdtemp(prefix="execgate-egress-ca-")
        os.chmod(self.directory, 0o755)  # noqa: S103  # a public certificate, nothing secret
        self.bundle = os.path.join(self.directory, "ca.pem")
        with open(self.bundle, "wb") as f:
            f.write(self._ca.public_bytes(serialization.Encoding.PEM))
        os.chmod(self.bundle, 0o644)
        self._private = tempfile.mkdtemp(prefix="execgate-egress-leaf-")
        self._contexts: collections.OrderedDict[str, ssl.SSLContext] = collections.OrderedDict()
        self._lock = threading.Lock()

    def environment(self) -> dict[str, str]:
        """The variables that make the child's TLS clients trust this CA."""
        names = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
        return {name: self.bundle for name in names}

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self._private, ignore_errors=True)

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server context presenting a certificate for ``host``; a
        ClientHello naming another host (SNI) fails the handshake."""
        with self._lock:
            ctx = self._contexts.get(host)
            if ctx is not None:
                self._contexts.move_to_end(host)
                return ctx
        ctx = self._mint(host)
        with self._lock:
            self._contexts[host] = ctx
            while len(self._contexts) > _CACHED_HOSTS:
                self._contexts.popitem(last=False)
        return ctx

    def _mint(self, host: str) -> ssl.SSLContext:
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(host[:64]))
            .issuer_name(self._issuer)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(_ALPN)
        fd, path = tempfile.mkstemp(dir=self._private, suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(
                    self._leaf_key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
                f.write(leaf.public_bytes(serialization.Encoding.PEM))
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
        expected = None if isinstance(san, x509.IPAddress) else host

        def sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
            # The tunnel goes to the decided host whatever the tool names;
            # naming another one is refused rather than answered with a lie.
            if name is not None and expected is not None and name.rstrip(".").lower() != expected:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            if name is not None and expected is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            return None

        ctx.sni_callback = sni
        return ctx
