"""Names no file system can hold, planted in signed revisions with the forger: listings
holding one, and lookups of one, fail with EIO and one line naming the catalog and the
entry, in `parrot_cvmfs` and under `parrot_run` (where `cp -r` then writes nothing
outside its destination). Control characters are legal: raw when piped, quoted on a
terminal as GNU ls quotes them."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from parrot_cvmfs.commands.output import quote_name
from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .conftest import Cli, base_env, read_pty, repo_spec
from .forge import Forger

NAME = "names.test.org"
PARROT = [sys.executable, "-m", "parrot_cvmfs.tracer.main"]

# A file of the host that a name climbing out of /cvmfs/NAME/bad-dotdot reaches; the same
# name below `cp -r`'s destination climbs out of it.
BAIT = f"/tmp/parrot-cvmfs-test-names-bait.{os.getpid()}.txt"  # per run: runs may overlap
# directory -> (name planted there, its path key; None: parent + "/" + name)
BAD = {
    "bad-slash": ("a/b", None),
    "bad-dotdot": ("../../.." + BAIT, None),
    "bad-empty": ("", None),
    "bad-dot": (".", None),
    "bad-dotdot2": ("..", None),
    "bad-long": ("x" * 256, None),
    "bad-nul": ("cut\0tail", None),
    "bad-key": ("x", "/bad-key/y"),  # a row whose name is not the one its key hashes
}
# legal names: control characters, a quote, non-UTF-8 bytes
CONTROL = [
    b"esc\x1b[31mred",
    b"tab\there",
    b"nl\nline",
    b"del\x7f",
    b"it's",
    b"\xffnot-utf8",
    b"plain",
]


def run_pty(cmd: list[str], env: dict[str, str]) -> bytes:
    """What `cmd` writes to a terminal (its stdout a pty), newlines as the tty shows them."""
    primary, secondary = pty.openpty()
    p = subprocess.Popen(cmd, stdin=secondary, stdout=secondary, stderr=subprocess.PIPE, env=env)
    os.close(secondary)
    out = read_pty(primary)
    p.wait(timeout=60)
    os.close(primary)
    return out.replace(b"\r\n", b"\n")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A repository with one bad name in each bad-* directory (besides a good file)."""
    base = tmp_path_factory.mktemp("names")
    with open(BAIT, "wb") as f:
        f.write(b"escaped\n")
    src = base / "src"
    for d in [*BAD, "fine"]:
        (src / d).mkdir(parents=True)
        (src / d / "good.txt").write_bytes(b"good\n")
    (src / "ctl").mkdir()
    for n in CONTROL:
        with open(os.path.join(os.fsencode(src / "ctl"), n), "wb") as f:
            f.write(b"x\n")
    stratum, keys = str(base / "stratum"), str(base / "keys")
    publish(PublishOptions(source=str(src), name=NAME, stratum=stratum, keys_dir=keys))
    forger = Forger(stratum, keys, NAME)
    for d, (name, key) in BAD.items():
        forger.add_entry(f"/{d}", name, data=b"outside\n", path=key)
    srv = StratumServer(stratum)
    srv.start_background()
    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(NAME, f"{srv.url}/{NAME}", os.path.join(keys, f"{NAME}.pub")),
        LC_ALL="C.UTF-8",
    )
    yield {"env": env, "src": str(src), "root": forger.manifest().root_hash.hex, "base": base}
    srv.shutdown()
    os.unlink(BAIT)


def _cli(hostile, tmp_path) -> Cli:
    """parrot_cvmfs with a cache shared by the module's tests (one revision)."""
    return Cli({**hostile["env"], "PARROT_CVMFS_CACHE": str(hostile["base"] / "cli-cache")})


def _entry(d: str, looked_up: bool = False) -> str:
    """How messages name the bad entry: as listed (its directory and name) or as looked
    up (its path key)."""
    name, key = BAD[d]
    return repr(key if looked_up and key else f"/{d}/{name}")


@pytest.mark.parametrize("d", sorted(BAD))
def test_cli_listing_with_a_bad_name_fails_naming_catalog_and_entry(hostile, tmp_path, d):
    cli = _cli(hostile, tmp_path)
    p = cli("ls", NAME, f"/{d}")
    lines = p.stderr.decode().splitlines()
    assert p.returncode == 1 and p.stdout == b"", p.stderr
    assert len(lines) == 1, lines
    assert f"catalog {hostile['root']} at /" in lines[0], lines
    assert f"entry {_entry(d)}" in lines[0], lines


@pytest.mark.parametrize("d", ["bad-long", "bad-key"])
def test_cli_lookup_of_a_bad_entry_fails_naming_it(hostile, tmp_path, d):
    name, key = BAD[d]
    p = _cli(hostile, tmp_path)("stat", NAME, key or f"/{d}/{name}")
    lines = p.stderr.decode().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert f"catalog {hostile['root']} at /" in lines[0]
    assert f"entry {_entry(d, looked_up=True)}" in lines[0]


def test_cli_find_reports_each_bad_directory_and_goes_on(hostile, tmp_path):
    p = _cli(hostile, tmp_path)("find", NAME, "/", "--json")
    assert p.returncode == 1
    errors = p.stderr.decode().splitlines()
    assert sorted(e.split("entry ")[1].split(":")[0] for e in errors) == sorted(
        _entry(d) for d in BAD
    )
    assert b'"path": "/fine/good.txt"' in p.stdout  # the rest of the tree is there
    # and the entries around the bad ones answer
    cli = _cli(hostile, tmp_path)
    listed = cli("ls", NAME, "/", check=True).stdout.split(b"\n")
    assert all(d.encode() in listed for d in BAD)
    p = cli("cat", NAME, "/bad-dotdot/good.txt")
    assert p.returncode == 0 and p.stdout == b"good\n"


@pytest.fixture(scope="module", params=["notify", "ptrace"])
def mode(request):
    return {"PARROT_CVMFS_MODE": request.param}


def test_parrot_run_cp_r_writes_nothing_outside_dest(hostile, tmp_path, mode):
    work = tmp_path / "work"
    (work / "dest").mkdir(parents=True)
    (work / "tmp").mkdir()  # where the bait's name lands, seen from the destination
    env = {**hostile["env"], **mode}
    p = subprocess.run(
        [*PARROT, "--cache-dir", str(tmp_path / "cache"), "--"]
        + ["cp", "-r", f"/cvmfs/{NAME}", "dest/"],
        cwd=work,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode != 0
    written = sorted(
        os.path.relpath(os.path.join(dp, f), tmp_path)
        for dp, ds, fs in os.walk(tmp_path)
        for f in fs + ds
        if not os.path.join(dp, f).startswith(str(tmp_path / "cache"))
    )
    assert all(w in ("work", "work/tmp") or w.startswith("work/dest") for w in written), written
    assert not any("bait" in w for w in written), written
    assert (work / "dest" / NAME / "fine" / "good.txt").read_bytes() == b"good\n"
    # one line per bad entry, however often cp's calls met it
    ours = [line for line in p.stderr.decode().splitlines() if line.startswith("parrot_run:")]
    for d in BAD:
        hits = [line for line in ours if f"entry {_entry(d)}" in line]
        assert len(hits) == 1, (d, ours)
        assert f"catalog {hostile['root']} at /" in hits[0]
    assert "Input/output error" in p.stderr.decode()


def test_parrot_run_ls_of_a_bad_listing_is_eio(hostile, tmp_path, mode):
    env = {**hostile["env"], **mode}
    cmd = [*PARROT, "--cache-dir", str(tmp_path / "cache"), "--"]
    p = subprocess.run(
        cmd + ["ls", f"/cvmfs/{NAME}/bad-slash"], env=env, capture_output=True, timeout=120
    )
    err = p.stderr.decode()
    assert p.returncode != 0 and p.stdout == b""
    assert "Input/output error" in err
    assert f"entry {_entry('bad-slash')}" in err
    # a lookup of a row whose name is not its key's: EIO too, and named
    p = subprocess.run(
        cmd + ["stat", f"/cvmfs/{NAME}/bad-key/y"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode != 0 and b"Input/output error" in p.stderr, p.stderr
    assert f"entry {_entry('bad-key', looked_up=True)}" in p.stderr.decode()


def _sorted_names() -> list[bytes]:
    return sorted(CONTROL, key=lambda n: os.fsdecode(n))


def test_control_characters_pass_through_raw_when_piped(hostile, tmp_path, mode):
    p = _cli(hostile, tmp_path)("ls", NAME, "/ctl")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"".join(n + b"\n" for n in _sorted_names())
    # parrot_run's programs get the bytes as they are: ls prints what it prints natively
    env = {**hostile["env"], **mode, "LC_ALL": "C"}
    native = subprocess.run(
        ["ls", os.path.join(hostile["src"], "ctl")], env=env, capture_output=True
    )
    traced = subprocess.run(
        [*PARROT, "--cache-dir", str(tmp_path / "cache"), "--", "ls", f"/cvmfs/{NAME}/ctl"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert traced.returncode == 0 and traced.stdout == native.stdout != b""


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_names_are_quoted_on_a_terminal_as_gnu_ls_quotes_them(hostile, tmp_path, locale):
    env = {**hostile["env"], "PARROT_CVMFS_CACHE": str(tmp_path / "cache"), "LC_ALL": locale}
    ours = run_pty([sys.executable, "-m", "parrot_cvmfs", "ls", NAME, "/ctl"], env)
    gnu = run_pty(["ls", "-1", os.path.join(hostile["src"], "ctl")], env)
    assert b"\x1b" not in ours and b"\x7f" not in ours
    assert sorted(ours.splitlines()) == sorted(gnu.splitlines()), (ours, gnu)


# every kind of character GNU's shell-escape quoting treats differently
QUOTING_CASES = [
    "plain", "a b", "it's", "it's here", 'say "hi"', "tab\there", "nl\nx", "esc\x1b[31m",
    "del\x7f", "\udcff\udcfebin", "café", "#hash", "a#b", "~tilde", "a~b", "q?", "star*",
    "$dollar", "back\\slash", "semi;", "pipe|", "amp&", "paren(", "brack[", "{", "}", "{a",
    "eq=", "=eq", "comma,", "colon:", "at@", "caret^", "bang!", "pct%", "-lead", "x\x01y",
    "'", "''", "a'b\nc", "\u200bzw", "nb\u00a0sp", "\u009bcsi", "emoji😀", "back`tick",
    "\x1b", "tail\n", " lead", "\n'", "'\n", "\tit's\t", "a'\tb\t", "it's@", "it's{",
    "it's#", "#it's", "é'", "\u2028ls", "\u0378un", "bell\a", "cr\r", "vt\v", "ff\f", "bs\b",
]  # fmt: skip


@pytest.mark.parametrize("locale,utf8", [("C.UTF-8", True), ("C", False)])
def test_quote_name_matches_gnu_ls(tmp_path, locale, utf8):
    d = tmp_path / "q"
    d.mkdir()
    for n in QUOTING_CASES:
        open(os.path.join(os.fsencode(d), os.fsencode(n)), "wb").close()
    env = {**os.environ, "LC_ALL": locale}
    # -f: directory order, as os.listdir gives it
    gnu = run_pty(["ls", "-1", "-f", "-A", str(d)], env).splitlines()
    names = [os.fsdecode(n) for n in os.listdir(os.fsencode(d))]
    ours = [quote_name(n, utf8).encode("utf-8", "surrogateescape") for n in names]
    assert ours == gnu
