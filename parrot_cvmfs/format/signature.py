"""RSA keys and signatures of the CernVM-FS trust chain.

- The whitelist is signed by the repository master key with a raw PKCS#1 v1.5
  type-1 signature over the ASCII hex hash of its body (no DigestInfo).
- The manifest is signed by the certificate's key, PKCS#1 v1.5 with SHA-1,
  over the ASCII hex hash of its body.
- The certificate is trusted only through its fingerprint on the whitelist.
"""

from __future__ import annotations

import os

from ..errors import ConfigError, SignatureError
from .hashes import Algorithm, ContentHash, hash_bytes
from .values import decimal

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

# cryptography is imported where it is used: a supervisor starting from a warm cache
# does not verify anything again and should not pay for loading it.


def load_public_key(path: str) -> rsa.RSAPublicKey:
    """Load one PEM SubjectPublicKeyInfo RSA key; the error names the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read public key {path}: {e.strerror}") from None
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"public key {path} is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"public key {path} is not an RSA key")
    return key


def public_key_files(public_key: str | None, keys_dir: str | None) -> list[str]:
    """Key files as the client selects them: CVMFS_PUBLIC_KEY (colon list) first,
    otherwise every *.pub in CVMFS_KEYS_DIR."""
    if public_key:
        return [p for p in public_key.split(":") if p]
    if keys_dir:
        try:
            names = os.listdir(keys_dir)
        except OSError:
            return []
        return sorted(
            os.path.join(keys_dir, n) for n in names if n.endswith(".pub") and not n.startswith(".")
        )
    return []


def load_public_keys(paths: list[str]) -> list[rsa.RSAPublicKey]:
    """Load all keys; a listed but unusable file is an error, as for the real client."""
    return [load_public_key(p) for p in paths]


def verify_whitelist_signature(
    keys: list[rsa.RSAPublicKey], signed_text: bytes, signature: bytes
) -> bool:
    """True if any master key's raw PKCS#1 signature recovers exactly `signed_text`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import padding

    for key in keys:
        if len(signed_text) > key.key_size // 8 - 11:
            continue
        try:
            recovered = key.recover_data_from_signature(signature, padding.PKCS1v15(), None)
        except (InvalidSignature, ValueError):
            continue
        if recovered == signed_text:
            return True
    return False


def verify_manifest_signature(
    certificate: x509.Certificate, signed_text: bytes, signature: bytes
) -> bool:
    """True if the certificate's key signed `signed_text` (PKCS#1 v1.5, SHA-1)."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return False  # a key type cryptography cannot load signs nothing we accept
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, signed_text, padding.PKCS1v15(), hashes.SHA1())
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_raw_pkcs1(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """Raw PKCS#1 v1.5 type-1 signature of `data` (what `openssl pkeyutl -sign` makes
    with an RSA key and no digest); cryptography always adds a DigestInfo, so pad here."""
    k = key.key_size // 8
    if len(data) > k - 11:
        raise ValueError("data too long for raw RSA signature")
    block = b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data
    numbers = key.private_numbers()
    s = pow(int.from_bytes(block, "big"), numbers.d, numbers.public_numbers.n)
    return s.to_bytes(k, "big")


def sign_manifest(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """PKCS#1 v1.5 / SHA-1 signature, as cvmfs_swissknife sign makes for manifests."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return key.sign(data, padding.PKCS1v15(), hashes.SHA1())


def load_certificate(pem: bytes, source: str) -> x509.Certificate:
    """Parse the PEM certificate object; the error names where it came from."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SignatureError(f"certificate {source} is not a PEM X.509 certificate") from None


def certificate_fingerprint(certificate: x509.Certificate, algorithm: Algorithm) -> ContentHash:
    """Hash of the certificate's DER encoding, as whitelists list it."""
    from cryptography.hazmat.primitives import serialization

    return hash_bytes(algorithm, certificate.public_bytes(serialization.Encoding.DER))


def parse_fingerprint(line: str) -> ContentHash | None:
    """Parse a whitelist/blacklist fingerprint line; None if it is not one."""
    end = len(line)
    for stop in (" ", "\t", "#"):
        i = line.find(stop)
        if i != -1:
            end = min(end, i)
    text = line[:end].replace(":", "").lower()
    try:
        h = ContentHash.from_hex(text)
    except ValueError:
        return None
    return None if h.algorithm == Algorithm.MD5 else h


class Blacklist:
    """Certificate fingerprints and per-repository minimal revisions (`<fqrn N`)."""

    def __init__(self):
        self.fingerprints: list[ContentHash] = []
        self.min_revisions: dict[str, int] = {}

    @classmethod
    def load(cls, paths: list[str]) -> Blacklist:
        bl = cls()
        for path in paths:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise ConfigError(f"cannot read blacklist {path}: {e.strerror}") from None
            for line in lines:
                line = line.strip()
                if line.startswith("<"):
                    parts = line[1:].split()
                    rev = decimal(parts[1]) if len(parts) == 2 else None
                    if rev is not None:
                        name = parts[0]
                        bl.min_revisions[name] = max(rev, bl.min_revisions.get(name, 0))
                    continue
                fp = parse_fingerprint(line)
                if fp is not None:
                    bl.fingerprints.append(fp)
        return bl

    def is_blacklisted(self, certificate: x509.Certificate) -> bool:
        from cryptography.hazmat.primitives import serialization

        der = certificate.public_bytes(serialization.Encoding.DER)
        return any(hash_bytes(fp.algorithm, der) == fp for fp in self.fingerprints)
