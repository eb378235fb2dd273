"""The signed repository manifest `.cvmfspublished`.

Layout: `K<value>` lines, a `--` line, the hex hash of the body, then the raw
signature to the end of the file.
"""

from __future__ import annotations

from collections import namedtuple

from ..errors import ManifestError, SignatureError
from .hashes import ContentHash, hash_bytes, infer_algorithm
from .signature import verify_manifest_signature
from .values import decimal

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from cryptography import x509

ROOT_PATH_HASH = "d41d8cd98f00b204e9800998ecf8427e"  # md5("")
SEPARATOR = b"\n--\n"


def split_signed(data: bytes, what: str) -> tuple[bytes, bytes, bytes]:
    """Split a signed letter into (body incl. its last newline, hash line, signature)."""
    i = data.find(SEPARATOR)
    if i < 0:
        raise ManifestError(f"{what} is malformed: no '--' separator line")
    body = data[: i + 1]
    rest = data[i + len(SEPARATOR) :]
    j = rest.find(b"\n")
    if j < 0:
        raise ManifestError(f"{what} is malformed: no hash line after '--'")
    return body, rest[:j], rest[j + 1 :]


def check_body_hash(body: bytes, hash_line: bytes, what: str) -> None:
    """The printed hash must be the hash of the body (algorithm from its length)."""
    try:
        text = hash_line.decode("ascii")
        algorithm = infer_algorithm(text)
    except (UnicodeDecodeError, ValueError):
        raise ManifestError(f"{what} is malformed: bad hash line {hash_line[:60]!r}") from None
    if hash_bytes(algorithm, body).hex != text:
        raise SignatureError(f"{what}: body does not match its signed hash (tampered)")


def parse_fields(body: bytes) -> dict[str, str]:
    """ParseKeyvalMem: one-letter keys, last wins, except Z values joined with '|'."""
    fields: dict[str, str] = {}
    for raw in body.split(b"\n")[:-1]:  # an unterminated last line is ignored
        if not raw:
            continue
        if raw == b"--":
            break
        key, value = chr(raw[0]), raw[1:].decode("utf-8", "replace")
        if key == "Z" and "Z" in fields:
            fields["Z"] += "|" + value
        else:
            fields[key] = value
    return fields


def _hash_field(fields: dict[str, str], key: str, what: str) -> ContentHash | None:
    value = fields.get(key)
    if value is None or value == "":
        return None
    try:
        h = ContentHash.from_hex(value)
    except ValueError:
        raise ManifestError(
            f"{what} is malformed: field {key} is not a hash ({value[:60]!r})"
        ) from None
    return h


def _int_field(fields: dict[str, str], key: str, what: str) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    n = decimal(value)
    if n is None:
        raise ManifestError(f"{what} is malformed: field {key} is not a number ({value[:40]!r})")
    return n


def _yes(fields: dict[str, str], key: str, what: str) -> bool:
    return fields.get(key) == "yes"


def _text(fields: dict[str, str], key: str, what: str) -> str | None:
    return fields.get(key)


# The manifest's fields, in the order the writer exports them: key, attribute (None: a
# field checked or tolerated but not kept), how its value is read, and the value when
# it is absent. Parsing, the Manifest's attributes and export all come from here.
FIELDS = (
    ("C", "root_hash", _hash_field, None),  # required, checked by parse
    ("B", "root_size", _int_field, None),
    ("R", None, _text, None),  # the root path hash: md5(""), checked by parse
    ("D", "ttl", _int_field, 0),
    ("S", "revision", _int_field, 0),
    ("G", "garbage_collectable", _yes, False),
    ("A", "has_alt_catalog_path", _yes, False),
    ("L", None, _text, None),  # reserved micro-catalog field: tolerated, never used
    ("N", "fqrn", _text, None),
    ("X", "certificate", _hash_field, None),
    ("H", "history", _hash_field, None),
    ("T", "timestamp", _int_field, None),
    ("M", "metainfo", _hash_field, None),
    ("Y", "reflog", _hash_field, None),
)
_KEPT = [row for row in FIELDS if row[1] is not None]
EXPORT_ORDER = "".join(row[0] for row in FIELDS)


class Manifest(
    namedtuple(
        "Manifest",
        [row[1] for row in _KEPT] + ["fields", "raw", "body", "hash_line", "signature"],
        defaults=[row[3] for row in _KEPT[1:]] + [{}, b"", b"", b"", b""],
    )
):
    """Parsed manifest fields (FIELDS) plus the signed parts."""

    __slots__ = ()

    root_hash: ContentHash
    root_size: int | None
    ttl: int
    revision: int
    garbage_collectable: bool
    has_alt_catalog_path: bool
    fqrn: str | None
    certificate: ContentHash | None
    history: ContentHash | None
    timestamp: int | None
    metainfo: ContentHash | None
    reflog: ContentHash | None
    fields: dict[str, str]
    raw: bytes
    body: bytes
    hash_line: bytes
    signature: bytes

    @classmethod
    def parse(cls, data: bytes, what: str = "manifest") -> Manifest:
        """Parse the fields; the body hash and signature are checked by verify()."""
        if not data:
            raise ManifestError(f"{what} is empty")
        body, hash_line, signature = split_signed(data, what)
        fields = parse_fields(body)
        for key in "CRDS":
            if key not in fields:
                raise ManifestError(f"{what} is incomplete: field {key} missing")
        if fields["R"] != ROOT_PATH_HASH:
            raise ManifestError(f"{what}: root path hash {fields['R'][:40]!r} is not md5('')")
        values = {}
        for key, attr, read, default in _KEPT:
            value = read(fields, key, what)
            if value is None and key == "C":
                raise ManifestError(f"{what} is incomplete: field C is empty")
            values[attr] = default if value is None else value
        return cls(
            **values,
            fields=fields,
            raw=data,
            body=body,
            hash_line=hash_line,
            signature=signature,
        )

    def info(self, certificate_fingerprint: str = "") -> dict[str, str]:
        """The fields as `parrot_cvmfs info` shows them, in its order (a field of FIELDS
        that is shown is shown here)."""
        import time

        return {
            "revision": str(self.revision),
            "root_hash": self.root_hash.hex,
            "root_catalog_size": str(self.root_size) if self.root_size is not None else "",
            "ttl": str(self.ttl),
            "timestamp": str(self.timestamp or 0),
            "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.timestamp or 0)),
            "hash_algorithm": self.root_hash.algorithm.name.lower(),
            "certificate": self.certificate.hex if self.certificate else "",
            "certificate_fingerprint": certificate_fingerprint,
            "history": self.history.hex if self.history else "",
            "metainfo": self.metainfo.hex if self.metainfo else "",
            "reflog": self.reflog.hex if self.reflog else "",
            "garbage_collectable": "yes" if self.garbage_collectable else "no",
        }

    def check_name(self, fqrn: str, what: str = "manifest") -> None:
        if self.fqrn is not None and self.fqrn != fqrn:
            raise ManifestError(f"{what} is for repository {self.fqrn!r}, not {fqrn!r}")

    def verify(self, certificate: x509.Certificate, what: str = "manifest") -> None:
        """Check the body hash, then the signature with the certificate's key."""
        check_body_hash(self.body, self.hash_line, what)
        if not verify_manifest_signature(certificate, self.hash_line, self.signature):
            raise SignatureError(
                f"{what}: bad signature (not signed by certificate {self.certificate})"
            )


def export_manifest_body(fields: dict[str, str]) -> bytes:
    """Serialize fields in the writer's order (FIELDS), then any others."""
    lines = [f"{k}{fields[k]}\n" for k in EXPORT_ORDER if k in fields]
    lines += [f"{k}{v}\n" for k, v in fields.items() if k not in EXPORT_ORDER]
    return "".join(lines).encode()
