"""Content hashes as CernVM-FS names them: algorithm, hex form, object paths.

A hash string is lowercase hex followed by an algorithm id (`-rmd160`,
`-shake128`, nothing for SHA-1); the algorithm is inferred from the length.
Object names add a one-letter type suffix (C catalog, P chunk, H history,
X certificate, M metainfo); cache file names leave the suffix out.
"""

from __future__ import annotations


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
        if _ripemd160_available():
            return hashlib.new("ripemd160")
        from .ripemd160 import Ripemd160

        return Ripemd160()
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
