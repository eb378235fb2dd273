"""Content hashes as CernVM-FS names them: algorithm, hex form, object paths.

A hash string is lowercase hex followed by an algorithm id (`-rmd160`,
`-shake128`, nothing for SHA-1); the algorithm is inferred from the length.
Object names add a one-letter type suffix (C catalog, P chunk, H history,
X certificate, M metainfo); cache file names leave the suffix out.
"""

from __future__ import annotations

import struct


class Algorithm(int):
    """shash::Algorithms numbering; catalog flags store the value minus one.

    An int with names, not an IntEnum: enum (and re, for the hash syntax) would cost
    parrot_run's start-up several milliseconds."""

    __slots__ = ()
    MD5: Algorithm
    SHA1: Algorithm
    RMD160: Algorithm
    SHAKE128: Algorithm

    def __new__(cls, value: int) -> Algorithm:
        if isinstance(value, int) and 0 <= value < len(_ALGORITHMS):
            return _ALGORITHMS[value]
        raise ValueError(f"{value!r} is not a valid Algorithm")

    @property
    def name(self) -> str:
        return _ALGORITHM_NAMES[self]

    def __repr__(self) -> str:
        return f"<Algorithm.{self.name}: {int(self)}>"

    __str__ = int.__repr__


_ALGORITHM_NAMES = ("MD5", "SHA1", "RMD160", "SHAKE128")
_ALGORITHMS = tuple(int.__new__(Algorithm, i) for i in range(len(_ALGORITHM_NAMES)))
for _a in _ALGORITHMS:
    setattr(Algorithm, _a.name, _a)
del _a

ALGORITHM_ID = {Algorithm.SHA1: "", Algorithm.RMD160: "-rmd160", Algorithm.SHAKE128: "-shake128"}
ALGORITHM_BY_NAME = {
    "sha1": Algorithm.SHA1,
    "rmd160": Algorithm.RMD160,
    "shake128": Algorithm.SHAKE128,
}
DIGEST_SIZE = {Algorithm.MD5: 16, Algorithm.SHA1: 20, Algorithm.RMD160: 20, Algorithm.SHAKE128: 20}

SUFFIX_NONE = ""
SUFFIX_CATALOG = "C"
SUFFIX_PARTIAL = "P"
SUFFIX_HISTORY = "H"
SUFFIX_CERTIFICATE = "X"
SUFFIX_METAINFO = "M"
_SUFFIXES = "CPHXMLT"

_HEX_DIGITS = frozenset("0123456789abcdef")
_ALGORITHM_BY_ID = {v: k for k, v in ALGORITHM_ID.items()}


class ContentHash:
    """An immutable (algorithm, digest) pair."""

    __slots__ = ("algorithm", "digest", "_hex")

    def __init__(self, algorithm: Algorithm, digest: bytes):
        if len(digest) != DIGEST_SIZE[algorithm]:
            raise ValueError(f"{algorithm.name} digest must be {DIGEST_SIZE[algorithm]} bytes")
        self.algorithm = algorithm
        self.digest = bytes(digest)
        self._hex = digest.hex() + ALGORITHM_ID.get(algorithm, "")

    @classmethod
    def from_hex(cls, text: str) -> ContentHash:
        """Parse `hex[-algo]`; raises ValueError for anything else (no suffix allowed)."""
        algorithm, digest, suffix = _parse(text)
        if suffix:
            raise ValueError(f"unexpected type suffix in hash {text!r}")
        return cls(algorithm, digest)

    @classmethod
    def from_suffixed_hex(cls, text: str) -> tuple[ContentHash, str]:
        """Parse `hex[-algo][SUFFIX]`, returning the hash and the suffix letter ('' if none)."""
        algorithm, digest, suffix = _parse(text)
        return cls(algorithm, digest), suffix

    @property
    def hex(self) -> str:
        """Hex digest with the algorithm id, as in manifests and cache file names."""
        return self._hex

    def object_path(self, suffix: str = "") -> str:
        """Path of the object below the repository base URL, e.g. `/data/6e/d3...C`."""
        return f"/data/{self._hex[:2]}/{self._hex[2:]}{suffix}"

    def cache_name(self) -> str:
        """Relative cache file name `xx/rest<algo>` (no type suffix)."""
        return f"{self._hex[:2]}/{self._hex[2:]}"

    def fingerprint(self) -> str:
        """Whitelist fingerprint form: `AA:BB:...[-SHAKE128]`."""
        pairs = ":".join(f"{b:02X}" for b in self.digest)
        return pairs + ALGORITHM_ID.get(self.algorithm, "").upper()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ContentHash)
            and self.algorithm == other.algorithm
            and self.digest == other.digest
        )

    def __hash__(self) -> int:
        return hash((self.algorithm, self.digest))

    def __repr__(self) -> str:
        return f"ContentHash({self._hex!r})"

    def __str__(self) -> str:
        return self._hex


def _parse(text: str) -> tuple[Algorithm, bytes, str]:
    # hex (40, or 32 for MD5) [-rmd160|-shake128] [one capital letter]
    if type(text) is not str:  # a hostile database's column of another type
        raise ValueError(f"not a content hash: {text!r:.60}")
    suffix = text[-1:] if text[-1:].isascii() and text[-1:].isupper() else ""
    hexpart, dash, algo = text[: len(text) - len(suffix)].partition("-")
    algorithm = _ALGORITHM_BY_ID.get(dash + algo)
    if algorithm is None or not _HEX_DIGITS.issuperset(hexpart):
        raise ValueError(f"not a content hash: {text!r:.80}")
    if len(hexpart) == 32 and not dash:
        algorithm = Algorithm.MD5
    elif len(hexpart) != 40:
        raise ValueError(f"not a content hash: {text!r:.80}")
    if suffix and suffix not in _SUFFIXES:
        raise ValueError(f"unknown object type suffix in {text!r:.80}")
    return algorithm, bytes.fromhex(hexpart), suffix


class _Shake128:
    """SHAKE-128 squeezed to the 20 bytes CernVM-FS uses, with a hashlib-like API."""

    __slots__ = ("_h",)

    def __init__(self, data: bytes = b""):
        import hashlib

        self._h = hashlib.shake_128(data)

    def update(self, data) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest(20)

    def copy(self) -> _Shake128:
        c = _Shake128()
        c._h = self._h.copy()
        return c


_openssl_rmd160: bool | None = None


def _ripemd160_available() -> bool:
    global _openssl_rmd160
    if _openssl_rmd160 is None:
        import hashlib

        try:
            hashlib.new("ripemd160", b"")
            _openssl_rmd160 = True
        except (ValueError, TypeError):
            _openssl_rmd160 = False
    return _openssl_rmd160


try:  # CPython's own MD5: path hashes need no OpenSSL loaded at start-up
    from _md5 import md5 as _builtin_md5
except ImportError:  # pragma: no cover - other interpreters
    _builtin_md5 = None


def md5_digest(data: bytes) -> bytes:
    """MD5 of `data` (catalog path hashes, inode numbers)."""
    if _builtin_md5 is not None:
        return _builtin_md5(data).digest()
    import hashlib

    return hashlib.md5(data).digest()


def new_hasher(algorithm: Algorithm):
    """A fresh streaming hasher with update()/digest() for `algorithm`."""
    import hashlib  # imported when the first object is verified, not at start-up

    if algorithm == Algorithm.SHA1:
        return hashlib.sha1()
    if algorithm == Algorithm.SHAKE128:
        return _Shake128()
    if algorithm == Algorithm.RMD160:
        return hashlib.new("ripemd160") if _ripemd160_available() else _Ripemd160()
    if algorithm == Algorithm.MD5:
        return hashlib.md5()
    raise ValueError(f"unsupported hash algorithm {algorithm!r}")


def hash_bytes(algorithm: Algorithm, data: bytes) -> ContentHash:
    """Hash `data` whole."""
    h = new_hasher(algorithm)
    h.update(data)
    return ContentHash(algorithm, h.digest())


def infer_algorithm(hex_text: str) -> Algorithm:
    """Algorithm of a hash line by its length (32, 40, 47, 49 characters)."""
    return _parse(hex_text)[0]


# --- RIPEMD-160, for OpenSSL builds that moved it to the legacy provider ---------------------

_RMD_R1 = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    7,
    4,
    13,
    1,
    10,
    6,
    15,
    3,
    12,
    0,
    9,
    5,
    2,
    14,
    11,
    8,
    3,
    10,
    14,
    4,
    9,
    15,
    8,
    1,
    2,
    7,
    0,
    6,
    13,
    11,
    5,
    12,
    1,
    9,
    11,
    10,
    0,
    8,
    12,
    4,
    13,
    3,
    7,
    15,
    14,
    5,
    6,
    2,
    4,
    0,
    5,
    9,
    7,
    12,
    2,
    10,
    14,
    1,
    3,
    8,
    11,
    6,
    15,
    13,
]
_RMD_R2 = [
    5,
    14,
    7,
    0,
    9,
    2,
    11,
    4,
    13,
    6,
    15,
    8,
    1,
    10,
    3,
    12,
    6,
    11,
    3,
    7,
    0,
    13,
    5,
    10,
    14,
    15,
    8,
    12,
    4,
    9,
    1,
    2,
    15,
    5,
    1,
    3,
    7,
    14,
    6,
    9,
    11,
    8,
    12,
    2,
    10,
    0,
    4,
    13,
    8,
    6,
    4,
    1,
    3,
    11,
    15,
    0,
    5,
    12,
    2,
    13,
    9,
    7,
    10,
    14,
    12,
    15,
    10,
    4,
    1,
    5,
    8,
    7,
    6,
    2,
    13,
    14,
    0,
    3,
    9,
    11,
]
_RMD_S1 = [
    11,
    14,
    15,
    12,
    5,
    8,
    7,
    9,
    11,
    13,
    14,
    15,
    6,
    7,
    9,
    8,
    7,
    6,
    8,
    13,
    11,
    9,
    7,
    15,
    7,
    12,
    15,
    9,
    11,
    7,
    13,
    12,
    11,
    13,
    6,
    7,
    14,
    9,
    13,
    15,
    14,
    8,
    13,
    6,
    5,
    12,
    7,
    5,
    11,
    12,
    14,
    15,
    14,
    15,
    9,
    8,
    9,
    14,
    5,
    6,
    8,
    6,
    5,
    12,
    9,
    15,
    5,
    11,
    6,
    8,
    13,
    12,
    5,
    12,
    13,
    14,
    11,
    8,
    5,
    6,
]
_RMD_S2 = [
    8,
    9,
    9,
    11,
    13,
    15,
    15,
    5,
    7,
    7,
    8,
    11,
    14,
    14,
    12,
    6,
    9,
    13,
    15,
    7,
    12,
    8,
    9,
    11,
    7,
    7,
    12,
    7,
    6,
    15,
    13,
    11,
    9,
    7,
    15,
    11,
    8,
    6,
    6,
    14,
    12,
    13,
    5,
    14,
    13,
    13,
    7,
    5,
    15,
    5,
    8,
    11,
    14,
    14,
    6,
    14,
    6,
    9,
    12,
    9,
    12,
    5,
    15,
    8,
    8,
    5,
    12,
    9,
    12,
    5,
    14,
    6,
    8,
    13,
    6,
    5,
    15,
    13,
    11,
    11,
]
_RMD_K1 = [0x00000000, 0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xA953FD4E]
_RMD_K2 = [0x50A28BE6, 0x5C4DD124, 0x6D703EF3, 0x7A6D76E9, 0x00000000]
_M32 = 0xFFFFFFFF


def _rol(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _M32


def _rmd_f(j: int, x: int, y: int, z: int) -> int:
    if j < 16:
        return x ^ y ^ z
    if j < 32:
        return (x & y) | (~x & z)
    if j < 48:
        return (x | ~y) ^ z
    if j < 64:
        return (x & z) | (y & ~z)
    return x ^ (y | ~z)


class _Ripemd160:
    """Straightforward RIPEMD-160 (Dobbertin, Bosselaers, Preneel 1996)."""

    def __init__(self, data: bytes = b""):
        self._h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
        self._buf = b""
        self._len = 0
        self.update(data)

    def update(self, data) -> None:
        data = bytes(data)
        self._len += len(data)
        buf = self._buf + data
        n = len(buf) // 64 * 64
        for i in range(0, n, 64):
            self._compress(buf[i : i + 64])
        self._buf = buf[n:]

    def _compress(self, block: bytes) -> None:
        x = struct.unpack("<16I", block)
        al, bl, cl, dl, el = self._h
        ar, br, cr, dr, er = self._h
        for j in range(80):
            r = j // 16
            t = (al + (_rmd_f(j, bl, cl, dl) & _M32) + x[_RMD_R1[j]] + _RMD_K1[r]) & _M32
            t = (_rol(t, _RMD_S1[j]) + el) & _M32
            al, el, dl, cl, bl = el, dl, _rol(cl, 10), bl, t
            t = (ar + (_rmd_f(79 - j, br, cr, dr) & _M32) + x[_RMD_R2[j]] + _RMD_K2[r]) & _M32
            t = (_rol(t, _RMD_S2[j]) + er) & _M32
            ar, er, dr, cr, br = er, dr, _rol(cr, 10), br, t
        h = self._h
        t = (h[1] + cl + dr) & _M32
        h[1] = (h[2] + dl + er) & _M32
        h[2] = (h[3] + el + ar) & _M32
        h[3] = (h[4] + al + br) & _M32
        h[4] = (h[0] + bl + cr) & _M32
        h[0] = t

    def digest(self) -> bytes:
        saved = (list(self._h), self._buf, self._len)
        self.update(b"\x80" + b"\x00" * ((55 - self._len) % 64) + struct.pack("<Q", self._len * 8))
        out = struct.pack("<5I", *self._h)
        self._h, self._buf, self._len = saved
        return out
