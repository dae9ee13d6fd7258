"""A throwaway CA and certificates it signs, for the tests' local TLS servers
(the egress proxy's HTTPS upstream, Redis over TLS) and their clients."""

from __future__ import annotations

import datetime as dt
import ipaddress
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class LocalCA:
    """A CA (written to ``directory/test-ca.pem``) that issues leaf certificates."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.now = dt.datetime.now(dt.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "execgate test CA")])
        self.ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        ca = (
            self._builder(self.name, self.key.public_key(), 1)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(self.ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "test-ca.pem"
        self.path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.serial = 1

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, serial: int
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(self.now - dt.timedelta(hours=1))
            .not_valid_after(self.now + dt.timedelta(hours=2))
        )

    def _leaf(self, common_name: str, usage: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        self.serial += 1
        builder = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                key.public_key(),
                self.serial,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self.ski),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(common_name))])
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def server(self) -> pathlib.Path:
        """A chain file (certificate + key) for a server at 127.0.0.1."""
        cert, key = self._leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH)
        chain = self.directory / "test-server.pem"
        chain.write_bytes(cert + key)
        return chain

    def client(self, name: str) -> tuple[pathlib.Path, pathlib.Path]:
        """A client certificate file and its key file."""
        cert, key = self._leaf(name, ExtendedKeyUsageOID.CLIENT_AUTH)
        paths = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        paths[0].write_bytes(cert)
        paths[1].write_bytes(key)
        return paths


def local_ca(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A CA file and a server chain file (certificate + key) for 127.0.0.1."""
    ca = LocalCA(directory)
    return ca.path, ca.server()
