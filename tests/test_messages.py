"""Messages a user can act on: one line naming what was wrong, once, and exit 1; never
a traceback (issue 10 item 5, and the malformed inputs of item 4 as users meet them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from parrot_cvmfs.errors import CatalogError, WhitelistError
from parrot_cvmfs.format.entry import FLAG_FILE, FLAG_POS_HASH
from parrot_cvmfs.format.whitelist import Whitelist
from parrot_cvmfs.server.serve import StratumServer

from .conftest import PARROT_RUN, Cli, base_env, repo_spec
from .forge import Forger
from .servers import dead_url

pytestmark = pytest.mark.tracer

PARROT = PARROT_RUN


def parrot(env, cache, *args, timeout=120):
    return subprocess.run(
        [*PARROT, "--cache-dir", str(cache), *args], env=env, capture_output=True, timeout=timeout
    )


def lines(p) -> list[str]:
    return p.stderr.decode("utf-8", "replace").splitlines()


@pytest.fixture(scope="module")
def forged(published, tmp_path_factory):
    """A copy of the published repository with hostile rows in files of their own."""
    base = tmp_path_factory.mktemp("messages")
    pub = published.copy(str(base / "stratum"))
    forger = Forger(pub.stratum, pub.keys, pub.name)
    bits = 5 << FLAG_POS_HASH  # algorithm 6: no such algorithm
    forger.add_entry("/deep/a", "algo.txt", data=b"a\n", flags=FLAG_FILE | bits)
    forger.add_entry("", "bad-xattr.txt", data=b"x\n", xattr=b"\x01\x05\x03")
    forger.add_entry("/empty-dir", "negative.txt", data=b"n\n", size=-1)
    forger.edit(lambda db: db.execute("UPDATE properties SET value = 'abc' WHERE key = 'revision'"))
    srv = StratumServer(pub.stratum)
    srv.start_background()
    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(pub.name, f"{srv.url}/{pub.name}", pub.pubkey),
        PARROT_CVMFS_MODE="ptrace",
    )
    yield {"env": env, "name": pub.name, "forger": forger, "root": forger.manifest().root_hash.hex}
    srv.shutdown()


# -- parrot_run --cvmfs R with no network: its one line, once -----------------------------------


def test_eager_mount_failure_is_one_line_once(published, tmp_path):
    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(published.name, dead_url(published.name), published.pubkey)
    )
    p = parrot(env, tmp_path / "c", "--cvmfs", published.name, "--", "true")
    assert p.returncode == 1
    assert len(lines(p)) == 1, lines(p)
    assert lines(p)[0].startswith(f"parrot_run: cannot mount /cvmfs/{published.name}:")


# -- a broken PARROT_CVMFS_REPO entry, an unconfigured repository: why, once per repository -----


@pytest.mark.parametrize(
    "spec,why",
    [
        ("{name}:url", "PARROT_CVMFS_REPO: option 'url' for repository {name} has no value"),
        ("", "unknown repository {name}: no CVMFS_SERVER_URL configured"),
    ],
    ids=["no-url", "unconfigured"],
)
def test_lazy_mount_failure_says_why_once_per_repository(published, tmp_path, spec, why):
    name = "lazy.example.org"
    env = base_env(PARROT_CVMFS_REPO=spec.format(name=name, url=dead_url(name)))
    script = f"ls /cvmfs/{name}; ls /cvmfs/{name}/x; stat /cvmfs/{name} || echo gone"
    p = parrot(env, tmp_path / "c", "--", "sh", "-c", script)
    ours = [line for line in lines(p) if line.startswith("parrot_run:")]
    assert len(ours) == 1, lines(p)
    assert ours[0].startswith(f"parrot_run: cannot mount /cvmfs/{name}: " + why.format(name=name))
    assert b"gone" in p.stdout  # the program still sees ENOENT
    assert "No such file or directory" in p.stderr.decode()


def test_names_that_are_no_repository_are_enoent_silently(tmp_path):
    """git, pyenv and the like probe /cvmfs/.git, /cvmfs/.python-version: as under
    autofs, ENOENT and nothing printed (a repository's name has dots between labels)."""
    names = [".git", ".python-version", "README", "a..b", "x.", ".hidden.org"]
    script = "; ".join(f"ls -d /cvmfs/{n} 2>/dev/null || echo no" for n in names)
    p = parrot(base_env(), tmp_path / "c", "--", "sh", "-c", script)
    assert p.stdout.decode().split() == ["no"] * len(names)
    assert lines(p) == [], lines(p)


# -- directories named on the command line must exist -------------------------------------------


@pytest.mark.parametrize("option", ["--alien-cache", "--config-dir"])
def test_missing_directory_options_are_refused(published, tmp_path, option):
    env = base_env()
    missing = str(tmp_path / "nonexistent")
    p = parrot(env, tmp_path / "c", option, missing, "--", "true")
    assert p.returncode == 1 and lines(p) == [f"parrot_run: {option} {missing} does not exist"]
    p = Cli(env)("info", published.name, option, missing, "--cache-dir", tmp_path / "c")
    assert p.returncode == 1 and lines(p) == [f"parrot_cvmfs: {option} {missing} does not exist"]
    if option == "--config-dir":
        p = Cli(env)(
            "preload", "-u", dead_url(published.name), "-r", tmp_path / "p", option, missing
        )
        assert p.returncode == 1 and lines(p) == [
            f"parrot_cvmfs: {option} {missing} does not exist"
        ]


# -- every command honours and checks the pinning options -----------------------------------------


@pytest.mark.parametrize("command", ["info", "tags"])  # ls and cat checked them already
@pytest.mark.parametrize(
    "pin,why",
    [
        (("--tag", "nosuchtag"), "has no tag 'nosuchtag'"),
        (("--date", "yesterday"), "bad date 'yesterday'"),
        (("--date", "1990-01-01"), "has no state as early as 1990-01-01"),
    ],
    ids=["tag", "date", "early"],
)
def test_pinning_options_are_checked_by_every_command(forged, tmp_path, command, pin, why):
    cli = Cli({**forged["env"], "PARROT_CVMFS_CACHE": str(tmp_path / "c")})
    p = cli(command, forged["name"], *pin)
    assert p.returncode == 1 and p.stdout == b"", p.stdout
    assert len(lines(p)) == 1 and why in lines(p)[0], lines(p)


def test_info_shows_the_pinned_revision(forged, published, tmp_path):
    cli = Cli({**forged["env"], "PARROT_CVMFS_CACHE": str(tmp_path / "c")})
    out = cli("info", forged["name"], "--tag", "first", check=True).stdout.decode()
    assert "tag: first" in out
    assert f"mounted_root_hash: {published.result.root_hash.hex}" in out


# -- name what it was about ---------------------------------------------------------------------


def test_unknown_hash_algorithm_names_catalog_entry_and_field(forged, tmp_path):
    cli = Cli({**forged["env"], "PARROT_CVMFS_CACHE": str(tmp_path / "c")})
    p = cli("cat", forged["name"], "/deep/a/algo.txt")
    assert p.returncode == 1 and len(lines(p)) == 1, lines(p)
    assert lines(p)[0] == (
        f"parrot_cvmfs: malformed catalog {forged['root']} at /: entry '/deep/a/algo.txt':"
        " field flags: unknown hash algorithm 6"
    )


def test_a_bad_catalog_property_is_named_under_parrot_run(forged, tmp_path):
    code = f"import os; os.getxattr('/cvmfs/{forged['name']}', 'user.revision')"
    p = parrot(forged["env"], tmp_path / "c", "--", sys.executable, "-c", code)
    assert p.returncode == 1
    assert "OSError: [Errno 5] Input/output error" in p.stderr.decode()  # the program's own
    ours = [line for line in lines(p) if line.startswith("parrot_run:")]
    assert ours == [
        f"parrot_run: malformed catalog {forged['root']} at /: property revision is 'abc'"
    ]


def test_writing_to_a_full_disk_names_the_output(forged, tmp_path):
    cli = Cli({**forged["env"], "PARROT_CVMFS_CACHE": str(tmp_path / "c")})
    with open("/dev/full", "wb") as full:
        p = subprocess.run(
            [sys.executable, "-m", "parrot_cvmfs", "cat", forged["name"], "/README"],
            env=cli.env,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert p.returncode == 1
    assert lines(p) == ["parrot_cvmfs: cannot write to standard output: No space left on device"]


def test_find_json_reports_a_bad_xattr_list_for_that_entry_and_goes_on(forged, tmp_path):
    cli = Cli({**forged["env"], "PARROT_CVMFS_CACHE": str(tmp_path / "c")})
    p = cli("find", forged["name"], "/", "--json")
    assert p.returncode == 1
    records = {r["path"]: r for r in map(json.loads, p.stdout.decode().splitlines())}
    assert "/README" in records and len(records) > 50  # the walk went on
    bad = records["/bad-xattr.txt"]
    assert "xattrs" not in bad and "entry '/bad-xattr.txt': field xattr" in bad["error"]
    # that entry's line, and one for the directory the bad algorithm's row is in
    assert sorted(lines(p)) == sorted(
        [
            f"parrot_cvmfs: {bad['error']}",
            f"parrot_cvmfs: malformed catalog {forged['root']} at /: entry '/deep/a/algo.txt':"
            " field flags: unknown hash algorithm 6",
            f"parrot_cvmfs: {NEGATIVE.format(root=forged['root'])}",
        ]
    )


NEGATIVE = (
    "malformed catalog {root} at /: entry '/empty-dir/negative.txt':"
    " field size is -1, not an integer 0..9223372036854775807"
)


def test_a_negative_size_is_eio_and_one_line_under_parrot_run(forged, tmp_path):
    path = f"/cvmfs/{forged['name']}/empty-dir/negative.txt"
    p = parrot(forged["env"], tmp_path / "c", "--", "sh", "-c", f"stat {path}; cat {path}")
    assert p.returncode == 1
    assert f"stat: cannot statx '{path}': Input/output error" in p.stderr.decode()
    ours = [line for line in lines(p) if line.startswith("parrot_run:")]
    assert ours == [f"parrot_run: {NEGATIVE.format(root=forged['root'])}"]


# -- malformed trust chain: one line, never a traceback ------------------------------------------


def test_a_whitelist_expiry_no_key_signed_is_one_line_not_a_traceback(published, tmp_path):
    """`²` is a digit to str.isdigit but not to int(); the whitelist is parsed before its
    signature is checked, so anyone between client and server can send it."""
    pub = published.copy(str(tmp_path / "stratum"))
    path = os.path.join(pub.stratum, pub.name, ".cvmfswhitelist")
    with open(path, "rb") as f:
        lines_ = f.read().split(b"\n")
    lines_[1] = lines_[1][:9] + "²".encode() + lines_[1][10:]  # still 15 characters
    with open(path, "wb") as f:
        f.write(b"\n".join(lines_))
    srv = StratumServer(pub.stratum)
    srv.start_background()
    try:
        env = base_env(PARROT_CVMFS_REPO=repo_spec(pub.name, f"{srv.url}/{pub.name}", pub.pubkey))
        p = parrot(env, tmp_path / "c", "--cvmfs", pub.name, "--", "true")
        assert p.returncode == 1 and len(lines(p)) == 1, lines(p)
        assert "whitelist of" in lines(p)[0] and "malformed (bad expiry" in lines(p)[0]
        # a refused repository is no defect of ours: no traceback even with --debug
        again = parrot(env, tmp_path / "c", "--debug", "--cvmfs", pub.name, "--", "true")
        assert again.returncode == 1 and lines(again) == lines(p)
    finally:
        srv.shutdown()


def test_a_signed_whitelist_with_month_13_is_refused(published, tmp_path):
    pub = published.copy(str(tmp_path / "stratum"))
    data = Forger(pub.stratum, pub.keys, pub.name).sign_whitelist("20991331120000")
    with pytest.raises(WhitelistError, match=r"malformed \(bad expiry 'E20991331120000'\)"):
        Whitelist.parse(data, "whitelist")
    srv = StratumServer(pub.stratum)
    srv.start_background()
    try:
        env = base_env(PARROT_CVMFS_REPO=repo_spec(pub.name, f"{srv.url}/{pub.name}", pub.pubkey))
        p = Cli(env)("info", pub.name, "--cache-dir", tmp_path / "c")
        assert p.returncode == 1 and p.stdout == b"", p.stdout
        assert len(lines(p)) == 1 and "bad expiry 'E20991331120000'" in lines(p)[0]
    finally:
        srv.shutdown()


def test_one_line_rule_covers_sqlite_texts():
    e = CatalogError(
        "malformed catalog x at /: malformed database schema (t) - near\n  'x':\tsyntax"
    )
    assert str(e) == "malformed catalog x at /: malformed database schema (t) - near 'x': syntax"
    assert "\\x1b" in str(CatalogError("name 'a\x1b[2J'"))


@pytest.mark.parametrize(
    "url,why",
    [
        ("http://127.0.0.1:²/cvmfs/{name}", "has port '²', not 1 to 65535"),
        ("http://[::1/cvmfs/{name}", "has a malformed [IPv6] host"),
        ("htp://127.0.0.1/cvmfs/{name}", "is not an http:// or https:// URL"),
    ],
)
def test_a_malformed_server_url_is_named(published, tmp_path, url, why):
    url = url.format(name=published.name)
    env = base_env(PARROT_CVMFS_REPO=repo_spec(published.name, url, published.pubkey))
    p = Cli(env)("info", published.name, "--cache-dir", tmp_path / "c")
    assert p.returncode == 1
    assert lines(p) == [f"parrot_cvmfs: CVMFS_SERVER_URL of {published.name}: {url!r} {why}"]


def test_usage_errors_are_one_line(published, tmp_path):
    p = Cli(base_env())("ls", published.name, "--verify-at", "yesterday")
    assert p.returncode == 2
    assert lines(p) == [
        "parrot_cvmfs ls: argument --verify-at: bad date 'yesterday' (expected e.g."
        " 2024-05-01T12:00:00Z) (see parrot_cvmfs ls --help)"
    ]


@pytest.mark.unprivileged
def test_directory_options_an_unprivileged_user_cannot_reach(published, tmp_path):
    locked = tmp_path / "locked"
    (locked / "etc").mkdir(parents=True)
    os.chmod(locked, 0o700)  # root's: nobody cannot look inside
    target = str(locked / "etc")
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = base_env(HOME="/tmp", PARROT_CVMFS_CACHE="/tmp/parrot-cvmfs-nobody-cache")
    p = subprocess.run(
        [*as_nobody, *PARROT, "--config-dir", target, "--", "true"], env=env, capture_output=True
    )
    assert p.returncode == 1 and lines(p) == [
        f"parrot_run: --config-dir {target}: Permission denied"
    ]
    (tmp_path / "file").write_text("")
    p = Cli(base_env())("info", published.name, "--alien-cache", tmp_path / "file")
    assert lines(p) == [f"parrot_cvmfs: --alien-cache {tmp_path / 'file'} is not a directory"]
