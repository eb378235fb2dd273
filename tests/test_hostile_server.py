"""Transfers that a hostile server would never end (tests/hostile.py): an endless body,
a huge Content-Length, a body or headers trickled above the low-speed limit, an endless
zlib stream. Whatever the client fetches (a file, a chunk, a nested catalog, the
manifest), by whichever path (the CLI, the C fetcher of a preload, parrot_run), it
ends with exit status 1 and one line naming the object and the server; and with a
good second server, it gets the right bytes from that one.

Small timeouts keep this quick; only exit statuses and messages are asserted."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from parrot_cvmfs.client import cfetch
from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.download import Downloader
from parrot_cvmfs.client.network import DownloadSettings
from parrot_cvmfs.client.repository import Repository
from parrot_cvmfs.errors import DownloadError
from parrot_cvmfs.format.hashes import ContentHash
from parrot_cvmfs.server.chunking import ChunkSizes
from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .conftest import base_env, repo_spec
from .hostile import MODES, HostileServer
from .servers import serving

pytestmark = pytest.mark.tracer

NAME = "hostile.test.org"
CLI = [sys.executable, "-m", "parrot_cvmfs"]
PARROT = [sys.executable, "-m", "parrot_cvmfs.tracer.main"]
# a timeout of 2 s (the low-speed window too), quick retries
SETTINGS = {
    "CVMFS_TIMEOUT": "2",
    "CVMFS_TIMEOUT_DIRECT": "2",
    "CVMFS_BACKOFF_INIT": "0.01",
    "CVMFS_BACKOFF_MAX": "0.02",
}
FILE = b"a line of a small file that compresses well\n" * 60
CHUNKED = os.urandom(12 * 1024)
INNER = b"inside the nested catalog\n"


class Repo:
    def __init__(self, stratum: str, pubkey: str, objects: dict[str, tuple[str, str]]):
        self.stratum, self.pubkey = stratum, pubkey
        self.objects = objects  # target -> (server path of the object, what an error names)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repo:
    base = tmp_path_factory.mktemp("hostile")
    src = base / "src"
    (src / "nested").mkdir(parents=True)
    (src / "file.txt").write_bytes(FILE)
    (src / "chunked.bin").write_bytes(CHUNKED)
    (src / "nested" / ".cvmfscatalog").write_bytes(b"")
    (src / "nested" / "inner.txt").write_bytes(INNER)
    stratum, keys = str(base / "stratum"), str(base / "keys")
    publish(
        PublishOptions(
            source=str(src),
            name=NAME,
            stratum=stratum,
            keys_dir=keys,
            chunk_sizes=ChunkSizes(1024, 2048, 4096),
        )
    )
    pubkey = os.path.join(keys, f"{NAME}.pub")
    srv = StratumServer(stratum)
    srv.start_background()
    try:
        env = base_env(PARROT_CVMFS_REPO=repo_spec(NAME, f"{srv.url}/{NAME}", pubkey))
        with Repository.mount(
            NAME, cache_dir=str(base / "probe"), config=Configuration(env=env)
        ) as r:
            file_hash = r.lookup("/file.txt").hash
            chunks = r.chunks(r.lookup("/chunked.bin"))
            nested = r.lookup("/").catalog.nested_catalogs()["/nested"][0]
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(chunks) >= 3
    prefix = f"/cvmfs/{NAME}"
    return Repo(
        stratum,
        pubkey,
        {
            "file": (prefix + file_hash.object_path(), f"{NAME}:/file.txt"),
            "chunk": (prefix + chunks[0][2].object_path("P"), f"chunk 0 of {NAME}:/chunked.bin"),
            "nested": (prefix + nested.object_path("C"), f"catalog {nested.hex} of {NAME}:/nested"),
            "preload": (prefix + file_hash.object_path(), f"object {file_hash.hex} of {NAME}"),
            "manifest": (prefix + "/.cvmfspublished", f"manifest of {NAME}"),
        },
    )


@pytest.fixture(scope="module")
def good(repo):
    with serving(StratumServer(repo.stratum)) as srv:
        yield srv


@pytest.fixture
def hostile(repo):
    """A hostile server for each kind of command: `hostile(mode, targets)` is one whose
    objects of `targets` are answered in `mode` (the others as the stratum has them)."""
    made = []

    def make(mode: str, targets) -> HostileServer:
        srv = HostileServer(repo.stratum)
        srv.modes = {repo.objects[t][0]: mode for t in targets}
        srv.start_background()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


def commands(repo: Repo, urls: dict[str, str], tmp) -> dict[str, list[str]]:
    """The command that fetches each target (from its servers), by the paths a user takes."""
    each = {
        "file": [*CLI, "cat", NAME, "/file.txt"],
        "chunk": [*CLI, "cat", NAME, "/chunked.bin"],
        "nested": [*CLI, "cat", NAME, "/nested/inner.txt"],
        "manifest": [*CLI, "info", NAME],
        # the C fetcher takes every object of a preload first
        "preload": [*CLI, "preload", "-u", urls.get("preload"), "-m", NAME, "-k", repo.pubkey]
        + ["-r", tmp / "pl"],
        "parrot_run": [*PARROT, "--", "cat", f"/cvmfs/{NAME}/file.txt"],
    }
    out = {}
    for t in urls:
        cmd = [str(a) for a in each[t]]
        if t in ("file", "chunk", "nested", "manifest"):
            cmd += ["--cache-dir", str(tmp / f"cache-{t}")]
        elif t == "parrot_run":
            cmd[len(PARROT) : len(PARROT)] = ["--cache-dir", str(tmp / "cache-parrot")]
        out[t] = cmd
    return out


def run_all(repo: Repo, urls: dict[str, str], tmp) -> dict[str, subprocess.CompletedProcess]:
    """Run the command of each target with its server URLs, all at once (they mostly
    wait), each to its end."""
    procs = {}
    for t, cmd in commands(repo, urls, tmp).items():
        env = base_env(PARROT_CVMFS_REPO=repo_spec(NAME, urls[t], repo.pubkey), **SETTINGS)
        procs[t] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = {}
    for t, p in procs.items():
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs.values():
                q.kill()
            raise AssertionError(f"{t}: still running after 240 s") from None
        done[t] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return done


def failure_line(p: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed (parrot_run's own, for parrot_run)."""
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = p.stderr.decode().strip().splitlines()
    if p.args[: len(PARROT)] == PARROT:
        lines = [x for x in lines if x.startswith("parrot_run:")]  # cat prints its own
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def urls_of(hostile, mode: str, then: str = "") -> dict[str, str]:
    """Each command's server URLs: a hostile server answering its target in `mode`
    (the preload's only its file, as every other command's), then `then` if given."""
    cli = hostile(mode, ("file", "chunk", "nested"))
    pre = hostile(mode, ("preload",))
    tail = f";{then}/{NAME}" if then else ""
    out = {t: f"{cli.url}/{NAME}{tail}" for t in ("file", "chunk", "nested", "parrot_run")}
    out["preload"] = f"{pre.url}/{NAME}{tail}"
    return out


@pytest.mark.parametrize("mode", MODES)
def test_hostile_server_ends_with_one_line(repo, hostile, mode, tmp_path):
    urls = urls_of(hostile, mode)
    for t, p in run_all(repo, urls, tmp_path).items():
        path, what = repo.objects["file" if t == "parrot_run" else t]
        line = failure_line(p)
        prog = "parrot_run" if t == "parrot_run" else "parrot_cvmfs"
        server = urls[t].split(";")[0]
        assert line.startswith(f"{prog}: cannot download {what}: {server}/"), (t, line)
        assert path.split("/")[-1] in line, (t, line)
    # nothing of the hostile objects was kept
    for t in ("file", "chunk", "nested"):
        txn = tmp_path / f"cache-{t}" / "txn"
        assert not txn.exists() or os.listdir(txn) == [], t
    assert not (tmp_path / "pl" / f"manifest.{NAME}").exists()


@pytest.mark.parametrize("mode", [m for m in MODES if m != "trickle-body"])
def test_hostile_manifest(repo, hostile, tmp_path, mode):
    """The manifest has no size anyone records: a fixed cap bounds it (a manifest
    trickled at 2 KB/s would take the cap's half minute per attempt: left out)."""
    srv = hostile(mode, ("manifest",))
    p = run_all(repo, {"manifest": f"{srv.url}/{NAME}"}, tmp_path)["manifest"]
    line = failure_line(p)
    assert line.startswith(
        f"parrot_cvmfs: cannot download manifest of {NAME}: {srv.url}/{NAME}/.cvmfspublished: "
    ), line


@pytest.mark.parametrize("mode", MODES)
def test_fail_over_from_a_hostile_server(repo, hostile, good, mode, tmp_path):
    results = run_all(repo, urls_of(hostile, mode, then=good.url), tmp_path)
    want = {"file": FILE, "chunk": CHUNKED, "nested": INNER, "parrot_run": FILE}
    for t, p in results.items():
        assert p.returncode == 0, (t, p.stderr)
        if t in want:
            assert p.stdout == want[t], t
    assert (tmp_path / "pl" / f"manifest.{NAME}").exists()


def test_deadline_ends_headers_fast_enough_for_the_low_speed_rule(repo, hostile, tmp_path):
    """Header lines without end at 2 KB/s pass the low-speed rule: the deadline of the
    attempt (3 T + 100 bytes at 1 KB/s for an object of at most 100 bytes) ends them,
    in the Python downloader and in the C fetcher (before its 16 KiB header limit)."""
    srv = hostile("endless-headers", ("file",))
    url = f"{srv.url}/{NAME}"
    d = Downloader(DownloadSettings(hosts=[url], timeout=0.5, timeout_direct=0.5, max_retries=0))
    server_path = repo.objects["file"][0]
    rel = server_path[len(f"/cvmfs/{NAME}") :]
    try:
        with pytest.raises(DownloadError) as e:
            d.fetch(rel, what="the file", limit=100)
        assert str(e.value) == (
            f"cannot download the file: {url}{rel}: no complete answer within 1.6 s"
        )
        h = ContentHash.from_hex(rel.replace("/data/", "").replace("/", ""))
        tmp = str(tmp_path / "c-fetch")
        item = cfetch.Item(h, "", True, None, 100, tmp, None)
        (got,) = cfetch.fetch(d, [item], mode=0o600)
        assert got == cfetch.Outcome(None, False)  # given up in time, not a too long header
        assert not os.path.exists(tmp)
    finally:
        d.close()
