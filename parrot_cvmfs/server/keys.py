"""Repository keys with the real file names: NAME.masterkey / NAME.pub (whitelist
signing), NAME.key / NAME.crt (manifest signing). Created when missing."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ..atomic import write_atomic
from ..errors import ConfigError


@dataclass
class RepositoryKeys:
    master_key: rsa.RSAPrivateKey
    master_pub_path: str
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    created: list[str]

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _load_private(path: str) -> rsa.RSAPrivateKey:
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise ConfigError(f"cannot read key {path}: {e.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"key {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"key {path} is not an RSA key")
    return key


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_private(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _pem_public(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _self_signed(name: str, key: rsa.RSAPrivateKey) -> x509.Certificate:
    cn = name if len(name) <= 30 else name[:30] + "[...]"
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"{cn} CernVM-FS Release Managers")]
    )
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


def ensure_keys(keys_dir: str, name: str) -> RepositoryKeys:
    """Load the repository's keys from keys_dir, creating the missing ones."""
    os.makedirs(keys_dir, exist_ok=True)
    p = lambda ext: os.path.join(keys_dir, f"{name}.{ext}")  # noqa: E731
    created = []
    if os.path.exists(p("masterkey")):
        master = _load_private(p("masterkey"))
    else:
        if os.path.exists(p("pub")):
            raise ConfigError(f"{p('pub')} exists but its master key {p('masterkey')} is missing")
        master = _new_key()
        write_atomic(p("masterkey"), _pem_private(master), 0o400)
        created.append(p("masterkey"))
    if not os.path.exists(p("pub")):
        write_atomic(p("pub"), _pem_public(master.public_key()), 0o444)
        created.append(p("pub"))
    if os.path.exists(p("key")):
        key = _load_private(p("key"))
    else:
        key = _new_key()
        write_atomic(p("key"), _pem_private(key), 0o400)
        created.append(p("key"))
        if os.path.exists(p("crt")):
            os.unlink(p("crt"))
    if os.path.exists(p("crt")):
        try:
            with open(p("crt"), "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except ValueError:
            raise ConfigError(f"certificate {p('crt')} is not a PEM certificate") from None
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise ConfigError(f"certificate {p('crt')} does not belong to key {p('key')}")
    else:
        cert = _self_signed(name, key)
        write_atomic(p("crt"), cert.public_bytes(serialization.Encoding.PEM), 0o444)
        created.append(p("crt"))
    return RepositoryKeys(master, p("pub"), key, cert, created)
