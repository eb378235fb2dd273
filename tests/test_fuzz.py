"""Seeded mutation fuzzing of every parser of hostile input, over real inputs (the
CernVM-FS data in ../shared/cvmfs-data and our publisher's output).

Each case must either succeed or raise a CvmfsError whose text is one line (no other
exception type, no newline, no errno repr). Deterministic (fixed seeds), a few thousand
cases per parser, about a minute in all: `pytest -m fuzz` runs only these.
"""

from __future__ import annotations

import glob
import os
import random
import sqlite3
import types
import zlib

import pytest

from parrot_cvmfs.client import config as cfg
from parrot_cvmfs.client import config_files
from parrot_cvmfs.client.repository import Repository, inode_of
from parrot_cvmfs.client.trust import Breadcrumb
from parrot_cvmfs.errors import CvmfsError
from parrot_cvmfs.format.catalog import Catalog
from parrot_cvmfs.format.dirtab import Dirtab, RelaxedPathFilter
from parrot_cvmfs.format.hashes import Algorithm
from parrot_cvmfs.format.history import History, parse_repository_date
from parrot_cvmfs.format.manifest import Manifest
from parrot_cvmfs.format.signature import (
    Blacklist,
    certificate_fingerprint,
    load_certificate,
    load_public_key,
    verify_manifest_signature,
)
from parrot_cvmfs.format.whitelist import Whitelist
from parrot_cvmfs.format.xattrs import decode_xattrs, encode_xattrs
from parrot_cvmfs.tracer.structs import pack_stat, pack_statx, stat_attrs

from .conftest import REAL_MANIFESTS, REAL_REPOS, SHARED

pytestmark = [pytest.mark.fuzz, pytest.mark.usefixtures("shared_data")]

NOW = 1_700_000_000.0  # inside every real whitelist's validity but test.cern.ch's

# -- mutation -------------------------------------------------------------------------------------

# tokens that broke parsers before, or sit at the edge of a range
TOKENS = [
    b"\xc2\xb2",  # superscript two: str.isdigit says yes, int() says no
    "\u0663".encode(),  # an Arabic-Indic digit: int() takes it
    b"-1",
    b"0",
    b"13",
    b"99",
    b"9" * 25,
    b"1_0",
    b" 7",
    b"nan",
    b"inf",
    b"1e400",
    b"\x00",
    b"\n",
    b"\r\n",
    b"\xff\xfe",
    b"\x1b[31m",
    b"--\n",
    b"/",
    b"..",
    b"*",
    b"\\",
    b":",
    b"=",
    b",",
    b"|",
    b";",
    b"-shake128",
    b"-rmd160",
    b"C",
]


def mutate(rnd: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """1 to 4 random edits: flip, set, insert, delete, duplicate, splice, tokens."""
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        n = len(b)
        op = rnd.randrange(8)
        i = rnd.randrange(n + 1)
        if op == 0 and n:
            b[min(i, n - 1)] ^= 1 << rnd.randrange(8)
        elif op == 1 and n:
            b[min(i, n - 1)] = rnd.randrange(256)
        elif op == 2:
            b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif op == 3 and n:
            del b[i : i + rnd.randint(1, 16)]
        elif op == 4 and n:
            j = rnd.randrange(n)
            b[i:i] = b[j : j + rnd.randint(1, 32)]
        elif op == 5:
            other = rnd.choice(others)
            j = rnd.randrange(len(other) + 1)
            b[i:i] = other[j : j + rnd.randint(1, 64)]
        elif op == 6:
            tok = rnd.choice(TOKENS)
            b[i : i + rnd.randint(0, len(tok))] = tok
        else:
            # a digit replaced: numbers are where the parsers' ranges are
            digits = [k for k, c in enumerate(b) if 48 <= c <= 57]
            if digits:
                k = rnd.choice(digits)
                b[k : k + 1] = rnd.choice(TOKENS[:8])
    return bytes(b)


def expect_clean(fn, *args, case=None):
    """fn(*args) succeeds or raises a CvmfsError with a one-line text."""
    try:
        return fn(*args)
    except CvmfsError as e:
        text = str(e)
        assert text and "\n" not in text and "\r" not in text, (case, text)
        assert "[Errno" not in text and "\x1b" not in text, (case, text)
        return None
    except Exception as e:  # noqa: BLE001 - the point: show the input that did it
        raise AssertionError(f"{type(e).__name__}: {e} for input {case!r}") from e


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def objects(suffix: str, stratum_dirs: list[str]) -> list[bytes]:
    """The inflated objects of a type (C, H, X) in these stratum directories."""
    out = []
    for d in stratum_dirs:
        for p in sorted(glob.glob(os.path.join(d, "data", "*", "*" + suffix))):
            out.append(zlib.decompress(read(p)))
    return out


REAL_STRATA = sorted(glob.glob(os.path.join(REAL_REPOS, "*", "stratum")))


@pytest.fixture(scope="module")
def strata(published) -> list[str]:
    return [*REAL_STRATA, os.path.join(published.stratum, published.name)]


# -- manifest, whitelist, certificate, keys ------------------------------------------------------


def _certificates(strata) -> list:
    return [load_certificate(pem, "test") for pem in objects("X", strata)]


def test_fuzz_manifest(strata):
    samples = [read(os.path.join(d, ".cvmfspublished")) for d in strata]
    samples += [
        read(p) for p in sorted(glob.glob(os.path.join(REAL_MANIFESTS, "*", "*published*")))
    ]
    certs = _certificates(strata)
    rnd = random.Random(1)

    def one(data: bytes) -> None:
        m = Manifest.parse(data, "manifest of fuzz.test")
        expect_clean(m.check_name, "ref.test.org", "manifest of fuzz.test", case=data)
        for c in certs:
            expect_clean(m.verify, c, "manifest of fuzz.test", case=data)
        _ = (m.root_hash.hex, m.certificate, m.history)
        for key in "DSBT":  # a number was read from ASCII digits, nothing else
            if key in m.fields:
                assert m.fields[key].isascii() and m.fields[key].isdigit(), (data, key)

    for _ in range(3000):
        data = mutate(rnd, rnd.choice(samples), samples)
        expect_clean(one, data, case=data)


def test_fuzz_whitelist(strata):
    samples = [read(os.path.join(d, ".cvmfswhitelist")) for d in strata]
    samples += [
        read(p) for p in sorted(glob.glob(os.path.join(REAL_MANIFESTS, "*", "*whitelist*")))
    ]
    keys = [
        load_public_key(p)
        for p in sorted(glob.glob(os.path.join(REAL_REPOS, "*", "*.pub")))
        + sorted(glob.glob(os.path.join(REAL_MANIFESTS, "*", "*.pub")))
    ]
    certs = _certificates(strata)
    rnd = random.Random(2)

    def one(data: bytes) -> None:
        wl = Whitelist.parse(data, "whitelist of fuzz.test")
        wl.is_expired(NOW)
        wl.expiry_epoch()
        y, mo, d, h = wl.expires
        f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:00:00Z"  # noqa: B018 - as `info` prints it
        expect_clean(wl.verify, wl.fqrn, keys, NOW, "whitelist of fuzz.test", case=data)
        # as of just before its expiry: on to the name and signature checks
        wl.verify(wl.fqrn, keys, wl.expiry_epoch() - 3600, "whitelist of fuzz.test")
        for c in certs:
            expect_clean(wl.check_certificate, c, Blacklist(), case=data)

    for _ in range(2500):
        data = mutate(rnd, rnd.choice(samples), samples)
        expect_clean(one, data, case=data)


def test_fuzz_certificate_and_keys(strata, tmp_path):
    import base64

    pems = objects("X", strata)
    ders = [base64.b64decode(b"".join(p.split(b"\n")[1:-2])) for p in pems]
    manifest = Manifest.parse(read(os.path.join(REAL_STRATA[0], ".cvmfspublished")))
    rnd = random.Random(3)

    def one(pem: bytes) -> None:
        c = load_certificate(pem, "fuzz")
        for algorithm in (Algorithm.SHA1, Algorithm.RMD160, Algorithm.SHAKE128):
            certificate_fingerprint(c, algorithm)
        verify_manifest_signature(c, manifest.hash_line, manifest.signature)
        Blacklist().is_blacklisted(c)

    for k in range(1500):
        if k % 2:
            pem = mutate(rnd, rnd.choice(pems), pems)
        else:  # past the base64: the DER itself mutated
            der = mutate(rnd, rnd.choice(ders), ders)
            body = base64.encodebytes(der)
            pem = b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"
        expect_clean(one, pem, case=pem)
    keys = [read(p) for p in sorted(glob.glob(os.path.join(REAL_REPOS, "*", "*.pub")))]
    path = str(tmp_path / "key.pub")
    for _ in range(400):
        data = mutate(rnd, rnd.choice(keys), keys)
        with open(path, "wb") as f:
            f.write(data)
        expect_clean(load_public_key, path, case=data)


def test_fuzz_blacklist_and_breadcrumb(tmp_path):
    bls = [b"<ref.test.org 3\n", b"<a.b 12345\n"]
    bl = b"".join(
        [
            b"F2:13:0A:29:6B:AE:67:49:F8:6A:11:AE:0F:AE:B2:79:9E:8D:90:C6\n",
            b"<ref.test.org 3\n",
            b"# comment\n",
            b"AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD-SHAKE128\n",
        ]
    )
    crumbs = [b"6e946024a8c6d0a6e3e0fa4c9d5b4ae6b0bd9a3dT1700000000R7", b"abcT0R0", b"T1R1"]
    rnd = random.Random(4)
    path = str(tmp_path / "blacklist")
    for _ in range(800):
        data = mutate(rnd, rnd.choice([bl, *bls]), [bl, *bls])
        with open(path, "wb") as f:
            f.write(data)
        expect_clean(Blacklist.load, [path], case=data)
    for _ in range(1500):
        data = mutate(rnd, rnd.choice(crumbs), crumbs)
        expect_clean(lambda d: Breadcrumb.parse(d.decode("ascii", "replace")), data, case=data)


# -- catalogs, history, xattrs -------------------------------------------------------------------

VALUES = [
    None,
    -1,
    -(1 << 63),
    (1 << 63) - 1,
    1 << 40,
    0,
    7 << 8,
    5 << 8,
    3 << 11,
    0o170000,
    0o177777,
    2.5,
    "",
    "abc",
    "\u0663",
    "a/b",
    "..",
    "x" * 300,
    "nul\0x",
    b"\xff\xfe\xfd",
    b"\x01\x02",
    b"\x00" * 20,
    bytes(range(20)),
]


def _random_value(rnd: random.Random):
    v = rnd.choice(VALUES)
    if v == "abc":
        return "".join(chr(rnd.randrange(1, 0x3000)) for _ in range(rnd.randint(0, 12)))
    if v == b"\x01\x02":
        return bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 40)))
    return v


def _sql_mutate(rnd: random.Random, db: sqlite3.Connection, tables: list[str]) -> None:
    """Set 1 to 3 random fields of random rows to values of random type and range (in
    SQLite any column holds any type), or drop rows."""
    for _ in range(rnd.randint(1, 3)):
        table = rnd.choice(tables)
        try:
            cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            rowids = [r[0] for r in db.execute(f"SELECT rowid FROM {table}")]
        except sqlite3.DatabaseError:
            continue
        if not cols or not rowids:
            continue
        rowid = rnd.choice(rowids)
        if rnd.random() < 0.05:
            db.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))
            continue
        col = rnd.choice(cols)
        try:
            db.execute(f"UPDATE {table} SET {col} = ? WHERE rowid = ?", (_random_value(rnd), rowid))
        except sqlite3.IntegrityError:
            pass


def _db_cases(rnd, samples: list[bytes], tables: list[str], n: int, tmp_path):
    """n mutated databases (files): most edited with SQL, some with their bytes."""
    path = str(tmp_path / "fuzz.db")
    for k in range(n):
        base = rnd.choice(samples)
        if k % 5 == 4:  # bytes: past the header, where pages and records are
            data = bytearray(base)
            for _ in range(rnd.randint(1, 6)):
                i = rnd.randrange(100, len(data))
                data[i] = rnd.randrange(256)
            data = bytes(data)
            with open(path, "wb") as f:
                f.write(data)
            yield path, f"bytes case {k}"
            continue
        db = sqlite3.connect(":memory:")
        db.deserialize(base)  # edited in memory, written once
        _sql_mutate(rnd, db, tables)
        db.commit()
        with open(path, "wb") as f:
            f.write(db.serialize())
        db.close()
        yield path, f"sql case {k}"


class _StubRepo:
    """What Repository.stat_entry reads of its repository (the configuration part)."""

    def __init__(self):
        self.settings = types.SimpleNamespace(flag=lambda key, default=False: default)
        self.variant_env = {}
        self.dev = 1
        self.uid = self.gid = None

    expand_symlink = Repository.expand_symlink


def _exercise_catalog(path: str, case: str, limit: int = 400) -> None:
    """Everything a client asks of a catalog, every answer through what is sent to C."""
    cat = expect_clean(Catalog, path, None, "", case=case)
    if cat is None:
        return
    prefix = cat.properties.get("root_prefix")
    mountpoint = prefix if isinstance(prefix, str) and prefix.startswith("/") else ""
    if mountpoint:  # a nested catalog: mounted where it says it belongs
        cat.close()
        cat = expect_clean(Catalog, path, None, mountpoint, case=case)
        if cat is None:
            return
    try:
        for attr in ("revision", "ttl", "last_modified", "max_rowid"):
            expect_clean(getattr, cat, attr, case=case)
        expect_clean(cat.counters, case=case)
        expect_clean(cat.nested_catalogs, case=case)
        expect_clean(cat.objects, case=case)
        stub = _StubRepo()
        todo, seen = [mountpoint], 0
        root = expect_clean(cat.lookup, mountpoint, case=case)
        entries = [root] if root is not None else []
        while todo and seen < limit:
            d = todo.pop()
            listed = expect_clean(cat.listing, d, case=case) or []
            for e in listed:
                seen += 1
                entries.append(e)
                expect_clean(cat.lookup, e.path, case=case)
                if e.is_dir and not e.is_nested_mountpoint:
                    todo.append(e.path)
        for e in entries:
            expect_clean(decode_xattrs, e.xattr_blob, "xattrs", case=case)
            if e.is_chunked:
                expect_clean(cat.chunks, e, case=case)
            (e.kind, e.is_hidden, e.rdev, e.md5, e.hash.hex if e.hash else None, inode_of(e))
            s = Repository.stat_entry(stub, e)
            a = stat_attrs(s, s.st_rdev, s.st_mtime, s.st_mtime_nsec)
            pack_stat(a, "x86_64")
            pack_statx(a)
            os.fsencode(e.name)
    finally:
        cat.close()


def test_fuzz_catalog(strata, tmp_path):
    samples = objects("C", strata)
    rnd = random.Random(5)
    tables = ["catalog"] * 6 + ["chunks", "nested_catalogs", "properties", "statistics"]
    for path, case in _db_cases(rnd, samples, tables, 1500, tmp_path):
        _exercise_catalog(path, case)


def test_fuzz_history(strata, tmp_path):
    samples = objects("H", strata)
    rnd = random.Random(6)
    for path, case in _db_cases(rnd, samples, ["tags"] * 4 + ["properties"], 800, tmp_path):
        h = expect_clean(History, path, "history database of fuzz.test", case=case)
        if h is None:
            continue
        tags = expect_clean(h.tags, case=case) or []
        for t in tags[:5]:
            expect_clean(h.get, t.name, case=case)
            (t.root_hash.hex, t.revision + 0, t.timestamp + 0, t.size + 0, t.description + "")
        expect_clean(h.at, int(NOW), case=case)
        h.close()


def _real_xattr_blobs(strata) -> list[bytes]:
    out = []
    for data in objects("C", strata):
        db = sqlite3.connect(":memory:")
        db.deserialize(data)
        try:  # (catalogs older than schema revision 2 have no xattr column)
            out += [r[0] for r in db.execute("SELECT xattr FROM catalog WHERE xattr IS NOT NULL")]
        except sqlite3.OperationalError:
            pass
        db.close()
    return out


def test_fuzz_xattrs(strata):
    samples = _real_xattr_blobs(strata)
    samples.append(
        encode_xattrs({"user.a": b"1", "security.capability": bytes(20), "k" * 255: b""})
    )
    assert len(samples) > 1
    rnd = random.Random(7)
    for _ in range(4000):
        data = mutate(rnd, rnd.choice(samples), samples)
        for key in expect_clean(decode_xattrs, data, "xattrs of fuzz", case=data) or {}:
            assert key and "\0" not in key, data  # what setxattr could not have set


# -- dirtab, configuration, dates ---------------------------------------------------------------

DIRTABS = [
    b"/bar/*\n",
    b"/software/*/*\n! /software/*/.git\n!*.tmp\n# comment\n/lcg/releases/*\n",
    b"/a/b?c/*\n! /a/b?c/skip\n\\!literal\n/x\\*y\n",
]
PATHS = ["/bar/1", "/software/x/y", "/software/x/.git", "/a/bzc/q", "/lcg/releases/z.tmp", ""]


def test_fuzz_dirtab(tmp_path):
    rnd = random.Random(8)
    path = str(tmp_path / "dirtab")

    def one(text: bytes) -> None:
        d = Dirtab(text.decode("utf-8", "surrogateescape"), "fuzz dirtab")
        f = RelaxedPathFilter(d)
        for p in PATHS:
            d.matches(p)
            f.matches(p)
            f.is_opposing(p)

    for k in range(2500):
        data = mutate(rnd, rnd.choice(DIRTABS), DIRTABS)
        if k % 10 == 0:  # through the file, as preload and publish read it
            with open(path, "wb") as f:
                f.write(data)
            expect_clean(Dirtab.load, path, case=data)
        expect_clean(one, data, case=data)


SPECS = [
    b"ref.test.org:url=http://127.0.0.1:8000/cvmfs/ref.test.org,pubkey=/k/ref.pub",
    b"*.example.org:url=http://s1/cvmfs/*.example.org;http://s2/cvmfs/*.example.org,"
    b"proxies=http://p1:3128|http://p2:3128;DIRECT,timeout=5,quota_limit=100,max_ttl=10",
    b"a.b:url=http://x\\,y,CVMFS_MAX_RETRIES=3 <default-repositories>:proxies=DIRECT",
]
NUMERIC = [
    "CVMFS_TIMEOUT",
    "CVMFS_TIMEOUT_DIRECT",
    "CVMFS_LOW_SPEED_LIMIT",
    "CVMFS_MAX_RETRIES",
    "CVMFS_BACKOFF_INIT",
    "CVMFS_BACKOFF_MAX",
    "CVMFS_HOST_RESET_AFTER",
    "CVMFS_PROXY_RESET_AFTER",
    "CVMFS_QUOTA_LIMIT",
    "CVMFS_MAX_TTL",
    "CVMFS_MAX_SERVERS",
]


def test_fuzz_configuration(tmp_path):
    from parrot_cvmfs.client.network import DownloadSettings

    rnd = random.Random(9)
    names = ["ref.test.org", "x.example.org", "a.b", "alice.cern.ch"]

    def one(spec: bytes) -> None:
        text = spec.decode("utf-8", "surrogateescape")
        entries = cfg.parse_parrot_repos(text)
        for e in entries:
            for n in names:
                params = e.match(n)
                if params is None:
                    continue
                s = cfg.RepositorySettings(n, {**cfg.DEFAULTS, **params})
                for key in NUMERIC:
                    expect_clean(s.number, key, 1, case=spec)
                s.flag("CVMFS_AUTO_UPDATE", True)
                expect_clean(lambda s=s: s.server_urls, case=spec)
                expect_clean(lambda s=s: s.public_key_files, case=spec)
                expect_clean(DownloadSettings.from_settings, s, case=spec)

    for _ in range(2500):
        data = mutate(rnd, rnd.choice(SPECS), SPECS)
        expect_clean(one, data, case=data)

    # configuration files: the client's line rules, and the kept answers of the shell
    confs = [read(p) for p in sorted(glob.glob(os.path.join(SHARED, "etc-cvmfs", "*", "*.conf")))]
    outputs = [b"@@FILE 0\0CVMFS_SERVER_URL=http://a;http://b\0@@FILE 1\0X=1\0"]
    for _ in range(1500):
        data = mutate(rnd, rnd.choice(confs), confs)
        text = data.decode("utf-8", "surrogateescape")
        expect_clean(config_files.assigned_names, text, case=data)
        expect_clean(config_files._memo_key, "a.b", [("f", text)], {}, {"PATH": "/bin"}, case=data)
        out = mutate(rnd, outputs[0], outputs)
        expect_clean(config_files._parse_shell_output, out, case=out)
    # a few whole evaluations through /bin/sh, of mutated files in a configuration dir
    d = tmp_path / "etc"
    (d / "config.d").mkdir(parents=True)
    for _ in range(20):
        data = mutate(rnd, rnd.choice(confs), confs)
        (d / "config.d" / "fuzz.example.org.conf").write_bytes(data)
        conf = cfg.Configuration(env={"PATH": "/usr/bin:/bin"}, config_dir=str(d))
        s = expect_clean(conf.settings, "fuzz.example.org", case=data)
        if s is not None:
            for key in NUMERIC:
                expect_clean(s.number, key, 1, case=data)


def test_fuzz_dates():
    rnd = random.Random(10)
    dates = [b"2024-05-01T12:00:00Z", b"2015-06-20", b"2026-11-21T00:00:00+01:00"]
    for _ in range(1500):
        data = mutate(rnd, rnd.choice(dates), dates)
        expect_clean(parse_repository_date, data.decode("utf-8", "replace"), case=data)


# -- the C answer table's records (kept answers: memo files are cache files) ----------------------

_LOAD_RECORDS = """
import os, struct, sys, tempfile
from parrot_cvmfs.tracer.core import Core
from parrot_cvmfs.tracer.syscalls import calls_for, machine
d = tempfile.mkdtemp()
core = Core(calls_for(machine()), machine(), d + "/anchors", [d + "/cache"])
data = open(sys.argv[1], "rb").read()
at, taken = 0, []
while at < len(data):
    (n,) = struct.unpack_from("<I", data, at)
    taken.append(core.table_load(data[at + 4 : at + 4 + n]))
    at += 4 + n
print(" ".join(map(str, taken)))
"""


def _load_in_child(tmp_path, blobs: list[bytes]) -> list[int]:
    """Each blob loaded into a fresh table's worth of records in one child process (a
    crash there is a failure here, not the end of the suite): how many each took."""
    import subprocess
    import sys

    path = tmp_path / "blobs"
    path.write_bytes(b"".join(len(b).to_bytes(4, "little") + b for b in blobs))
    p = subprocess.run(
        [sys.executable, "-c", _LOAD_RECORDS, str(path)], capture_output=True, timeout=300
    )
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return [int(x) for x in p.stdout.split()]


def test_fuzz_answer_records(tmp_path):
    from parrot_cvmfs.tracer import memo
    from parrot_cvmfs.tracer.structs import host_attrs, pack_statfs
    from parrot_cvmfs.tracer.syscalls import machine

    st = pack_stat(host_attrs(os.stat("/")), machine())
    seeds = [
        memo.answer_record(True, b"/cvmfs/r/a", 0, st, [0] * 8, None),
        memo.answer_record(False, b"/cvmfs/r/l", 0, st, None, b"target"),
        memo.answer_record(True, b"/cvmfs/r/gone", 2, None, None, None),
        memo.exec_record(b"/cvmfs/r/bin/p", b"/c/patched/p", b"/cvmfs/r/bin/p"),
        memo.exec_record(b"/cvmfs/r/s", b"/c/p/sh", b"/cvmfs/r/sh", [b"/cvmfs/r/sh", b"-e"]),
        memo.exec_failure_record(b"/cvmfs/r/README", 13),
        memo.cwd_record(b"/anchors/r@x/d", b"/cvmfs/r/d"),
        memo.statfs_record(42, pack_statfs(10, 5, 0, 42)),
        memo.xattrs_record(True, b"/cvmfs/r/a", b"\x04\x00user\xfe\xff\xff\xff"),
    ]
    # the words of a script's recipe: each nonempty, at most 8, within the bound
    bad_words = [
        memo.exec_record(b"/k", b"/t", b"/l", [b"a", b""]),
        memo.exec_record(b"/k", b"/t", b"/l", [b"w"] * 9),
        memo.exec_record(b"/k", b"/t", b"/l", [b"w" * 1100]),
        memo.exec_record(b"/k", b"/t", b""),
        memo._record(b"E", True, b"/k", b"/t\0/l\0"),
        # a failure's errno: 1..4095, in exactly five bytes
        memo.exec_failure_record(b"/k", 0),
        memo.exec_failure_record(b"/k", -2),
        memo.exec_failure_record(b"/k", 4096),
        memo._record(b"E", True, b"/k", b"\0\x02\0\0"),
        memo._record(b"E", True, b"/k", b"\0\x02\0\0\0\0"),
    ]
    assert _load_in_child(tmp_path, seeds) == [1] * len(seeds)
    assert _load_in_child(tmp_path, bad_words) == [0] * len(bad_words)
    rnd = random.Random(14)
    whole = b"".join(seeds)
    blobs = [mutate(rnd, rnd.choice([whole, *seeds]), seeds) for _ in range(3000)]
    taken = _load_in_child(tmp_path, blobs)
    assert len(taken) == len(blobs) and all(0 <= n <= len(seeds) + 8 for n in taken)
