"""A local certificate authority for the secure stack (Python ``cryptography``).

:func:`ensure_pki` creates, once per stack home, a CA (``ca.pem``, 10 years), a server certificate
for the broker, its controller and Redis (``server.pem`` + ``server-key.pem``; SANs
``localhost``, ``127.0.0.1``, ``::1`` and the stack host; CN ``broker``, which the controller
listener's mutual TLS maps to the broker's own principal) and a PKCS#12 keystore of the same key
and chain for the JVM (``server.p12``, password in :class:`Pki`). Keys are EC P-256, private files
are written 0600. A present, readable set is reused (clients keep trusting the same CA across
restarts); certificates expiring within 30 days are made anew.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

#: validity of the CA and of the server certificate, days
CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE_DAYS = 30


@dataclass(frozen=True)
class Pki:
    """Paths of the stack's TLS material (all under ``directory``)."""

    directory: Path
    keystore_password: str

    @property
    def ca(self) -> Path:
        """The CA certificate (PEM): what every client trusts."""
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def cert(self) -> Path:
        """The server certificate chain (PEM: server certificate, then the CA)."""
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        """The server private key (PEM, PKCS#8, unencrypted, 0600)."""
        return self.directory / "server-key.pem"

    @property
    def keystore(self) -> Path:
        """PKCS#12 keystore of the server key + chain (for Kafka's JVM)."""
        return self.directory / "server.p12"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _valid_for(path: Path, days: int) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    left = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    return left > dt.timedelta(days=days)


def ensure_pki(directory: Path, host: str = "127.0.0.1") -> Pki:
    """The stack's CA and server certificate in ``directory`` (created or renewed when needed)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    pw_file = directory / "keystore.password"
    pki = Pki(directory, pw_file.read_text().strip() if pw_file.exists() else "")
    complete = all(p.exists() for p in (pki.ca, pki.ca_key, pki.cert, pki.key, pki.keystore, pw_file))
    if complete and _valid_for(pki.ca, RENEW_BEFORE_DAYS) and _valid_for(pki.cert, RENEW_BEFORE_DAYS):
        return pki
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    if _valid_for(pki.ca, RENEW_BEFORE_DAYS) and pki.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
        loaded = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mystocks-gpu local CA"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mystocks-gpu")])
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + dt.timedelta(days=CA_DAYS))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
        _write_private(pki.ca_key, ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    try:
        ip = ipaddress.ip_address(host)
        if x509.IPAddress(ip) not in names:
            names.append(x509.IPAddress(ip))
    except ValueError:
        names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(pki.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM))
    password = secrets.token_urlsafe(24)
    _write_private(pki.keystore, pkcs12.serialize_key_and_certificates(
        b"broker", key, cert, [ca_cert], serialization.BestAvailableEncryption(password.encode())))
    _write_private(pw_file, password.encode())
    return Pki(directory, password)
