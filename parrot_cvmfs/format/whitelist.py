"""The repository whitelist `.cvmfswhitelist`: which certificates may sign
manifests of a repository, until when, signed by the master key."""

from __future__ import annotations

import time

from ..errors import WhitelistError
from .hashes import ContentHash, hash_bytes
from .manifest import check_body_hash, split_signed
from .signature import Blacklist, parse_fingerprint, verify_whitelist_signature
from .values import decimal

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa


def parse_expiry(text: str) -> tuple[int, int, int, int] | None:
    """`YYYYMMDDhhmmss` as (year, month, day, hour), or None unless it is a real UTC
    time in ASCII digits (minutes and seconds are checked, then ignored, as the
    client ignores them)."""
    if len(text) != 14 or decimal(text) is None:
        return None
    y, mo, d, h, mi, s = (
        int(text[i : i + n]) for i, n in ((0, 4), (4, 2), (6, 2), (8, 2), (10, 2), (12, 2))
    )
    if not (1 <= y and 1 <= mo <= 12 and 0 <= h <= 23 and 0 <= mi <= 59 and 0 <= s <= 60):
        return None
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if not 1 <= d <= (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[mo - 1]:
        return None
    return y, mo, d, h


class Whitelist:
    def __init__(
        self,
        created: str,
        expires: tuple[int, int, int, int],
        expires_text: str,
        fqrn: str,
        raw: bytes = b"",
    ):
        self.created = created
        self.expires = expires  # UTC year, month, day, hour (minutes are ignored)
        self.expires_text = expires_text
        self.fqrn = fqrn
        self.fingerprints: list[ContentHash] = []
        self.pkcs7 = False
        self.ca_chain = False
        self.body = self.hash_line = self.signature = b""
        self.raw = raw

    @classmethod
    def parse(cls, data: bytes, what: str = "whitelist") -> Whitelist:
        if not data:
            raise WhitelistError(f"{what} is empty")
        text = data.split(b"\n--\n", 1)[0].decode("utf-8", "replace")
        lines = text.split("\n")
        if len(lines) < 2 or len(lines[0]) != 14 or len(lines[1]) != 15 or lines[1][0] != "E":
            raise WhitelistError(f"{what} is malformed (bad timestamp lines)")
        e = lines[1][1:]
        expires = parse_expiry(e)
        if expires is None:
            raise WhitelistError(f"{what} is malformed (bad expiry {lines[1]!r})")
        fqrn = lines[2][1:] if len(lines) > 2 and lines[2].startswith("N") else ""
        wl = cls(created=lines[0], expires=expires, expires_text=e, fqrn=fqrn, raw=data)
        for line in lines[3:]:
            if line == "Vpkcs7":
                wl.pkcs7 = True
            elif line == "Wcachain":
                wl.ca_chain = True
            else:
                fp = parse_fingerprint(line)
                if fp is not None:
                    wl.fingerprints.append(fp)
        if b"\n--\n" in data:
            wl.body, wl.hash_line, wl.signature = split_signed(data, what)
        return wl

    def expiry_epoch(self) -> int:
        y, m, d, h = self.expires
        import calendar

        return calendar.timegm((y, m, d, h, 0, 0))

    def is_expired(self, now: float | None = None) -> bool:
        """Valid only while the current UTC (year, month, day, hour) is strictly earlier."""
        t = time.gmtime(time.time() if now is None else now)
        return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour) >= self.expires

    def verify(
        self,
        fqrn: str,
        keys: list[rsa.RSAPublicKey],
        now: float | None = None,
        what: str = "whitelist",
    ) -> None:
        """Checks in the real client's order: expiry, name, signature."""
        if self.is_expired(now):
            y, m, d, h = self.expires
            raise WhitelistError(
                f"{what} expired on {y:04d}-{m:02d}-{d:02d} {h:02d}:00 UTC"
                " (use --verify-at for archived repositories)"
            )
        if self.fqrn != fqrn:
            raise WhitelistError(f"{what} is for repository {self.fqrn!r}, not {fqrn!r}")
        if self.pkcs7:
            raise WhitelistError(f"{what} requires PKCS#7 verification, which is not supported")
        if not self.body:
            raise WhitelistError(f"{what} is malformed: not signed")
        try:
            check_body_hash(self.body, self.hash_line, what)
        except Exception as e:
            raise WhitelistError(str(e)) from None
        if not keys:
            raise WhitelistError(f"{what}: no public master keys configured for {fqrn}")
        if not verify_whitelist_signature(keys, self.hash_line, self.signature):
            raise WhitelistError(f"{what}: bad signature (not signed by any configured master key)")

    def check_certificate(
        self, certificate: x509.Certificate, blacklist: Blacklist | None, what: str = "whitelist"
    ) -> None:
        """The certificate must be listed and not blacklisted."""
        from cryptography.hazmat.primitives import serialization

        der = certificate.public_bytes(serialization.Encoding.DER)
        if blacklist is not None and blacklist.is_blacklisted(certificate):
            raise WhitelistError(f"{what}: certificate is blacklisted")
        for fp in self.fingerprints:
            if hash_bytes(fp.algorithm, der) == fp:
                if self.ca_chain:
                    raise WhitelistError(
                        f"{what} requires a CA chain check, which is not supported"
                    )
                return
        raise WhitelistError(f"{what}: certificate is not on the whitelist")
