"""Format-level vectors from the CernVM-FS sources and real data."""

from __future__ import annotations

import calendar
import glob
import hashlib
import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from parrot_cvmfs.errors import CatalogError, SignatureError, WhitelistError
from parrot_cvmfs.format.catalog import expand_variant_symlink
from parrot_cvmfs.format.entry import md5path
from parrot_cvmfs.format.hashes import (
    Algorithm,
    ContentHash,
    hash_bytes,
)
from parrot_cvmfs.format.manifest import Manifest
from parrot_cvmfs.format.ripemd160 import Ripemd160
from parrot_cvmfs.format.signature import load_public_keys, parse_fingerprint
from parrot_cvmfs.format.whitelist import Whitelist
from parrot_cvmfs.format.xattrs import decode_xattrs, encode_xattrs

from .conftest import REAL_MANIFESTS, REAL_REPOS

FOX = b"The quick brown fox jumps over the lazy dog"


@pytest.mark.parametrize(
    "data,sha1,rmd,shake",
    [
        (
            b"",
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "9c1185a5c5e9fc54612808977ee8f548b2258d31",
            "7f9c2ba4e88f827d616045507605853ed73b8093",
        ),
        (
            b"abc",
            "a9993e364706816aba3e25717850c26c9cd0d89d",
            "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc",
            "5881092dd818bf5cf8a3ddb793fbcba74097d5c5",
        ),
        (
            FOX,
            "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
            "37f332f68db77bd9d7edd4969571ad671cf9dd3b",
            "f4202e3c5852f9182a0430fd8144f0a74b95e741",
        ),
    ],
)
def test_hash_vectors(data, sha1, rmd, shake):
    assert hash_bytes(Algorithm.SHA1, data).hex == sha1
    assert hash_bytes(Algorithm.RMD160, data).hex == rmd + "-rmd160"
    assert hash_bytes(Algorithm.SHAKE128, data).hex == shake + "-shake128"
    assert Ripemd160(data).digest().hex() == rmd  # the fallback without OpenSSL


@given(hs.binary(max_size=300))
def test_ripemd160_fallback_matches_openssl(data):
    try:
        want = hashlib.new("ripemd160", data).hexdigest()
    except ValueError:
        pytest.skip("this OpenSSL has no RIPEMD-160 to compare against")
    assert Ripemd160(data).digest().hex() == want


def test_object_paths_and_parsing():
    assert (
        ContentHash.from_hex("cf3e56cf3da37ad17cf1f2c2ff5d86497fc29068").object_path("V")
        == "/data/cf/3e56cf3da37ad17cf1f2c2ff5d86497fc29068V"
    )
    r = ContentHash.from_hex("aa1deda59d5329553580d78fcd0b393157a5d28e-rmd160")
    assert r.object_path("C") == "/data/aa/1deda59d5329553580d78fcd0b393157a5d28e-rmd160C"
    assert r.cache_name() == "aa/1deda59d5329553580d78fcd0b393157a5d28e-rmd160"
    s = ContentHash.from_hex("0152bb2ee41313d8d63b9274230f90379adf9201-shake128")
    assert s.object_path("L") == "/data/01/52bb2ee41313d8d63b9274230f90379adf9201-shake128L"
    assert (
        ContentHash.from_hex("cf95c182bb9214bcb9a23fed6658c60d061b45b5").fingerprint()
        == "CF:95:C1:82:BB:92:14:BC:B9:A2:3F:ED:66:58:C6:0D:06:1B:45:B5"
    )
    assert (
        ContentHash.from_hex("5a6e43fe25f5988160a07ff1fb200b29e6c10ad0-rmd160").fingerprint()
        == "5A:6E:43:FE:25:F5:98:81:60:A0:7F:F1:FB:20:0B:29:E6:C1:0A:D0-RMD160"
    )
    assert ContentHash.from_hex("68b329da9893e34099c7d8ad5cb9c940").algorithm == Algorithm.MD5
    for bad in [
        "adc83b19e793491b1c6ea0fd8b46cd9f32e592fc-rmd161",
        "adc83b19e793491b1c6ea0fd8b46cd9f32e592fc-rmd1600",
        "adc83b19e793491b1c6ea0fd8b46cd9f32e592fc-shake256",
        "ADC83B19E793491B1C6EA0FD8B46CD9F32E592FC",
        "a" * 64,
    ]:
        with pytest.raises(ValueError):
            ContentHash.from_hex(bad)
    h, suffix = ContentHash.from_suffixed_hex("6ed3d49a5c64f21f36936ab350d49aaf57585b9aC")
    assert suffix == "C" and h.algorithm == Algorithm.SHA1


def test_compressed_object_vectors():
    assert zlib.compress(b"") == bytes.fromhex("789c030000000001")
    assert (
        hash_bytes(Algorithm.SHA1, zlib.compress(b"")).hex
        == "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"
    )
    assert zlib.compress(b"foo\n") == bytes.fromhex("789c4bcbcfe7020003d1014f")
    assert (
        hash_bytes(Algorithm.SHA1, zlib.compress(b"foo\n")).hex
        == "d85ab7e835750785b0535d4fbba7d59e921b1f48"
    )


@pytest.mark.parametrize(
    "path,p1,p2",
    [
        ("", 338333539836370388, 9098107892288553193),
        ("/dir1", 3166896040631616765, -9060999833566460932),
        ("/dir2/ndir1", 7969032118162333449, 6611703122828319098),
        ("/dir2/ndir1/nndir1", -312895864749502431, -1112864143176671683),
        (
            "/needs_migration/simple_directory/symlink_foo",
            -6721796596654522980,
            1578344478611703254,
        ),
        (
            "/lib/lhcb/ALIGNMENT/ALIGNMENT_v9r2/Phys/CommonParticles/tests/qmtest/commonparticles.qms/.svn/tmp/prop-base",
            4069996547627848455,
            -3471940481646685085,
        ),
    ],
)
def test_md5_path_keys(path, p1, p2):
    assert md5path(path) == (p1, p2)


def test_xattr_blob():
    blob = encode_xattrs({"user.foo": b"bar"})
    assert blob == bytes.fromhex("0101080375736572" + "2e666f6f626172")
    assert decode_xattrs(blob) == {"user.foo": b"bar"}
    assert encode_xattrs({}) is None
    many = {"user.b": b"", "user.a": bytes(range(255))}
    assert decode_xattrs(encode_xattrs(many)) == many
    with pytest.raises(CatalogError, match="unknown version"):
        decode_xattrs(b"\x02\x00")


def test_variant_symlinks():
    env = {"X": "1", "EMPTY": ""}
    assert expand_variant_symlink("$(CVMFS_ARCH:-x86_64)/lib", env) == "x86_64/lib"
    assert expand_variant_symlink("$(X)/$(X:-no)/$(EMPTY:-no)", env) == "1/1/"
    assert expand_variant_symlink("$(UNSET)x", env) == "x"
    assert expand_variant_symlink("a$(", env) == "a$("
    assert expand_variant_symlink("a$(b", env) == "a$(b"
    assert expand_variant_symlink("plain", env) == "plain"


@pytest.mark.usefixtures("shared_data")
def test_emscripten_manifests_and_whitelists_verify():
    d = os.path.join(REAL_MANIFESTS, "emscripten.cvmfs.io")
    keys = load_public_keys([os.path.join(d, "emscripten.cvmfs.io.pub")])
    for m, w, suffix in [
        ("cvmfspublished", "cvmfswhitelist", ""),
        ("cvmfspublished-shake128", "cvmfswhitelist-shake128", "-shake128"),
    ]:
        with open(os.path.join(d, m), "rb") as f:
            man = Manifest.parse(f.read())
        assert man.fqrn == "emscripten.cvmfs.io"
        assert man.root_hash.hex.endswith(suffix) or not suffix
        with open(os.path.join(d, w), "rb") as f:
            wl = Whitelist.parse(f.read())
        inside = calendar.timegm(wl.expires + (0, 0)) - 3600
        wl.verify("emscripten.cvmfs.io", keys, now=inside)
        assert wl.fingerprints[0].hex.endswith(suffix)
        with pytest.raises(WhitelistError, match="expired"):
            wl.verify("emscripten.cvmfs.io", keys)
        with pytest.raises(WhitelistError, match="for repository"):
            wl.verify("other.cvmfs.io", keys, now=inside)


@pytest.mark.usefixtures("shared_data")
def test_broken_signature_manifests_refused():
    from cryptography import x509

    files = sorted(glob.glob(os.path.join(REAL_MANIFESTS, "broken-signatures", "*")))
    assert len(files) == 4
    # any certificate will do: the signatures are mangled
    with open(os.path.join(REAL_REPOS, "ref.test.org", "ref.test.org.crt"), "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    for path in files:
        with open(path, "rb") as f:
            man = Manifest.parse(f.read())  # the header parses
        assert man.fqrn in ("data", "test") and man.certificate is not None
        with pytest.raises(SignatureError):
            man.verify(cert)


@pytest.mark.usefixtures("shared_data")
def test_real_manifest_signature_and_whitelist(tmp_path):
    from cryptography import x509

    base = os.path.join(REAL_REPOS, "ref.test.org")
    with open(os.path.join(base, "stratum", ".cvmfspublished"), "rb") as f:
        man = Manifest.parse(f.read())
    with open(os.path.join(base, "ref.test.org.crt"), "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    man.verify(cert)
    with open(os.path.join(base, "stratum", ".cvmfswhitelist"), "rb") as f:
        wl = Whitelist.parse(f.read())
    wl.verify("ref.test.org", load_public_keys([os.path.join(base, "ref.test.org.pub")]))
    wl.check_certificate(cert, None)


def test_whitelist_parse_rules():
    with pytest.raises(WhitelistError, match="malformed"):
        Whitelist.parse(b"XXXXXXXXXXXXXX\n19840403000000")
    wl = Whitelist.parse(b"XXXXXXXXXXXXXX\nE19840403000000")
    assert wl.is_expired()
    with pytest.raises(WhitelistError, match="expired"):
        wl.verify("abc", [])
    future = Whitelist.parse(b"XXXXXXXXXXXXXX\nE20991231000000")
    with pytest.raises(WhitelistError, match="for repository"):
        future.verify("abc", [])
    named = Whitelist.parse(b"XXXXXXXXXXXXXX\nE20991231000000\nNabc")
    with pytest.raises(WhitelistError, match="not signed"):
        named.verify("abc", [])
    assert (
        parse_fingerprint(
            "F2:13:0A:29:6B:AE:67:49:F8:6A:11:AE:0F:AE:B2:79:9E:8D:90:C6 # a comment"
        ).hex
        == "f2130a296bae6749f86a11ae0faeb2799e8d90c6"
    )
    assert parse_fingerprint("not a fingerprint") is None
