"""parrot_run behind real site infrastructure: Squid forward proxies in front of nginx
strata, as on a batch farm. Traffic goes through the proxy, a second job is served
from the proxy's cache, and a proxy or a stratum stopped in the middle of a job is
failed over without the job noticing. The proxies a site publishes in PAC files
(`auto`), the order a stratum 1's Geo-API gives, and the proxy lists the shipped
configuration gives, for the Python downloader and for parrot_run's C fetcher."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.download import Downloader
from parrot_cvmfs.client.geo import parse_reply
from parrot_cvmfs.client.network import DIRECT, DownloadSettings, NetworkPath, parse_proxy_groups
from parrot_cvmfs.client.pac import translate
from parrot_cvmfs.server.geo import GeoConfig
from parrot_cvmfs.server.geo import answer as geo_answer

from .conftest import base_env, failed_with_one_line, parse_sha256sum, sha256_tree
from .servers import FaultyServer, Nginx, Squid, dead_url, free_port, serving, wait_for_port

pytestmark = pytest.mark.tracer

PARROT = [sys.executable, "-m", "parrot_cvmfs.tracer.main"]


@pytest.fixture
def nginx_pair(published, tmp_path):
    a = Nginx(published.stratum, str(tmp_path / "nginx-a"))
    b = Nginx(published.stratum, str(tmp_path / "nginx-b"))
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def squids(tmp_path):
    made = []

    def make():
        s = Squid()
        made.append(s)
        return s

    yield make
    for s in made:
        s.remove()


def env_for(published, servers: str, proxies: str) -> dict[str, str]:
    entry = f"{published.name}:url={servers},pubkey={published.pubkey},proxies={proxies}"
    return base_env(PARROT_CVMFS_REPO=entry)


def object_urls(lines: list[list[str]], result: str) -> set[str]:
    return {f[6] for f in lines if len(f) > 6 and f[3].startswith(result) and "/data/" in f[6]}


def paused_job(env, cache, files: list[str], mnt: str, tmp_path):
    """A job that reads the first half of `files`, says so, waits, then reads the rest."""
    half = len(files) // 2
    marker, go = tmp_path / "half", tmp_path / "go"
    first = " ".join(f"'{mnt}/{f}'" for f in files[:half])
    rest = " ".join(f"'{mnt}/{f}'" for f in files[half:])
    script = (
        f"sha256sum {first}; touch {marker}; while [ ! -e {go} ]; do sleep 0.05; done; "
        f"sha256sum {rest}"
    )
    p = subprocess.Popen(
        [*PARROT, "--cache-dir", str(cache), "--", "/bin/sh", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not marker.exists():
        if time.time() > deadline or p.poll() is not None:
            p.kill()
            raise AssertionError(f"the job did not reach its pause: {p.communicate()[1]!r}")
        time.sleep(0.05)
    return p, go


def readable_files(published) -> dict[str, str]:
    # plain names (the shell script quotes with '), every catalog
    return {
        k: v
        for k, v in sha256_tree(published.src).items()
        if "'" not in k and "\\" not in k and "\n" not in k
    }


def test_through_squid_and_second_job_from_its_cache(published, nginx_pair, squids, tmp_path):
    ng, _ = nginx_pair
    sq = squids()
    env = env_for(published, f"{ng.url}/{published.name}", sq.url)
    # the objects the jobs ask for, exactly: no guesses fetched ahead, which a run may
    # or may not finish before it ends (tests/test_prefetch.py has those)
    env["PARROT_CVMFS_PREFETCH"] = "0"
    mnt = f"/cvmfs/{published.name}"
    files = readable_files(published)
    script = " ".join(f"'{mnt}/{f}'" for f in files)
    for k in (1, 2):  # two jobs, each with its own empty cache
        p = subprocess.run(
            [
                *PARROT,
                "--cache-dir",
                str(tmp_path / f"cache{k}"),
                "--",
                "/bin/sh",
                "-c",
                f"sha256sum {script}",
            ],
            env=env,
            capture_output=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr
        assert parse_sha256sum(p.stdout, mnt) == files
        if k == 1:
            time.sleep(0.3)
            log1 = sq.access_log()
            nginx_before = len([x for x in ng.access_log() if "/data/" in x])
    time.sleep(0.3)
    log = sq.access_log()
    second = log[len(log1) :]
    misses = object_urls(log1, "TCP_MISS")
    assert len(misses) > 40, "the first job's objects did not go through the proxy"
    assert object_urls(second, "TCP_") == misses  # the same objects, asked again...
    assert all("HIT" in f[3] for f in second if len(f) > 6 and "/data/" in f[6])  # ...and cached
    assert len([x for x in ng.access_log() if "/data/" in x]) == nginx_before


def test_proxy_failover_mid_job(published, nginx_pair, squids, tmp_path):
    ng, _ = nginx_pair
    first, second = squids(), squids()
    env = env_for(published, f"{ng.url}/{published.name}", f"{first.url};{second.url}")
    mnt = f"/cvmfs/{published.name}"
    files = readable_files(published)
    names = sorted(files)
    p, go = paused_job(env, tmp_path / "cache", names, mnt, tmp_path)
    first.stop()  # the first proxy dies while the job runs
    go.touch()
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert parse_sha256sum(out, mnt) == files
    assert object_urls(first.access_log(), "TCP_MISS")
    assert object_urls(second.access_log(), "TCP_MISS"), "nothing went through the second proxy"


def test_stratum_failover_mid_job(published, nginx_pair, tmp_path):
    a, b = nginx_pair
    env = env_for(published, f"{a.url}/{published.name};{b.url}/{published.name}", "DIRECT")
    mnt = f"/cvmfs/{published.name}"
    files = readable_files(published)
    p, go = paused_job(env, tmp_path / "cache", sorted(files), mnt, tmp_path)
    before = [x for x in b.access_log() if "/data/" in x]
    a.stop()  # the first stratum 1 goes away
    go.touch()
    out, err = p.communicate(timeout=600)
    assert not before, "the second stratum was used before the first went away"
    assert p.returncode == 0, err
    assert parse_sha256sum(out, mnt) == files
    assert [x for x in b.access_log() if "/data/" in x], "nothing came from the second stratum"


def test_preload_through_squid(published, nginx_pair, squids, tmp_path):
    """The bulk fetcher speaks to a proxy as the client does (absolute URLs)."""
    ng, _ = nginx_pair
    sq = squids()
    env = base_env(CVMFS_HTTP_PROXY=sq.url)
    d = tmp_path / "preload"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "parrot_cvmfs",
            "preload",
            "-u",
            f"{ng.url}/{published.name}",
            "-r",
            str(d),
            "-k",
            published.pubkey,
        ],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    time.sleep(0.3)
    fetched = int(p.stdout.split(b"fetched ")[1].split()[0])
    assert len(object_urls(sq.access_log(), "TCP_MISS")) >= fetched > 40


# -- CVMFS_HTTP_PROXY=auto: the site's proxies from its PAC files ---------------------------


def pac_script(answer: str) -> bytes:
    return b'function FindProxyForURL(url, host) { return "%s"; }' % answer.encode()


@pytest.fixture
def stratum(published):
    """The published repository on a counting loopback stratum (127.0.0.1)."""
    with serving(FaultyServer(published.stratum)) as srv:
        yield srv


@pytest.fixture
def pacs(tmp_path):
    """A loopback server of PAC files (and anything else a test puts in `answers`)."""
    (tmp_path / "empty").mkdir()
    with serving(FaultyServer(str(tmp_path / "empty"))) as srv:
        srv.base = srv.url.removesuffix("/cvmfs")
        yield srv


def object_paths(published, n: int) -> list[str]:
    """Paths (below the repository URL) of `n` objects of the published repository."""
    root = os.path.join(published.stratum, published.name)
    out = []
    for d, _dirs, files in sorted(os.walk(os.path.join(root, "data"))):
        out += ["/" + os.path.relpath(os.path.join(d, f), root) for f in sorted(files)]
    return out[:n]


def squid_objects(sq) -> set[str]:
    return {urllib.parse.urlsplit(u).path for u in object_urls(sq.access_log(), "TCP_")}


def stratum_objects(srv) -> set[str]:
    return set(srv.data_requests())


def test_pac_names_the_squid_python_downloader(published, stratum, pacs, squids):
    """A PAC file that cannot be fetched is skipped for the next, whose proxy every
    request then goes through."""
    sq = squids()
    pacs.answers["/wpad.dat"] = pac_script(f"PROXY 127.0.0.1:{sq.port}")
    dead = dead_url().removesuffix("/cvmfs")
    dl = Downloader(
        DownloadSettings(
            hosts=[f"{stratum.url}/{published.name}"],
            proxy="auto",
            pac_urls=f"{dead}/wpad.dat;{pacs.base}/wpad.dat",
        )
    )
    paths = object_paths(published, 20)
    for p in paths:
        dl.fetch(p, what=p, limit=64 << 20)
    assert dl.path.proxy_list() == [sq.url]
    assert any(f"{dead}/wpad.dat" in n and "cannot connect" in n for n in dl.path.notes)
    time.sleep(0.3)  # squid writes its log after the answer
    prefix = f"/cvmfs/{published.name}"
    assert {prefix + p for p in paths} <= squid_objects(sq)
    assert stratum_objects(stratum) == squid_objects(sq)  # nothing arrived but through it


def test_pac_names_the_squid_parrot_run(published, stratum, pacs, squids, tmp_path):
    """parrot_run on a cold cache (the C fetcher): every object through the PAC's squid."""
    sq = squids()
    pacs.answers["/wpad.dat"] = pac_script(f"PROXY 127.0.0.1:{sq.port}; DIRECT")
    env = env_for(published, f"{stratum.url}/{published.name}", "auto")
    env["CVMFS_PAC_URLS"] = f"{pacs.base}/wpad.dat"
    mnt = f"/cvmfs/{published.name}"
    files = readable_files(published)
    script = " ".join(f"'{mnt}/{f}'" for f in files)
    p = subprocess.run(
        [*PARROT, "--cache-dir", str(tmp_path / "c"), "--", "/bin/sh", "-c", f"sha256sum {script}"],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert parse_sha256sum(p.stdout, mnt) == files
    time.sleep(0.3)
    got = squid_objects(sq)
    assert len(got) > 40, "the objects did not go through the PAC file's squid"
    assert stratum_objects(stratum) == got
    assert pacs.requests["/wpad.dat"] == 1  # settled once, for every thread


FAILING_PACS = {
    "/bad.js": b"function FindProxyForURL(url, host) { return ",
    "/none.pac": b"function SomethingElse() { return 'PROXY 127.0.0.1:9'; }",
    "/throws.pac": b"function FindProxyForURL(url, host) { throw 'no'; }",
    "/socks.pac": pac_script("SOCKS 127.0.0.1:1080"),
}


def failing_pac_urls(pacs) -> str:
    return ";".join(f"{pacs.base}{p}" for p in [*FAILING_PACS, "/missing.pac"])


def test_failing_pacs_fall_to_the_next_group(published, stratum, pacs, squids):
    """Every PAC file fails (no JavaScript, no FindProxyForURL, an exception, only SOCKS,
    a 404): the `auto` group is dropped, with a line for each, and the next group serves."""
    pacs.answers.update(FAILING_PACS)
    sq = squids()
    dl = Downloader(
        DownloadSettings(
            hosts=[f"{stratum.url}/{published.name}"],
            proxy=f"auto;{sq.url}",
            pac_urls=failing_pac_urls(pacs),
        )
    )
    assert dl.fetch("/.cvmfspublished", what="manifest")
    assert dl.path.proxy_list() == [sq.url]
    notes = "\n".join(dl.path.notes)
    assert "bad.js: the script does not load" in notes
    assert "none.pac: FindProxyForURL gave no answer" in notes
    assert "throws.pac: FindProxyForURL gave no answer" in notes
    assert "socks.pac names no usable proxy" in notes
    assert "missing.pac: HTTP 404" in notes
    assert dl.path.notes[-1] == "auto proxy: no PAC file gave a proxy, the group is dropped"


def test_failing_pacs_parrot_run_goes_direct(published, stratum, pacs, tmp_path):
    """`auto;DIRECT` with failing PAC files: parrot_run reads the repository DIRECT and
    says why in its debug log."""
    pacs.answers.update(FAILING_PACS)
    env = env_for(published, f"{stratum.url}/{published.name}", "auto;DIRECT")
    env["CVMFS_PAC_URLS"] = failing_pac_urls(pacs)
    mnt = f"/cvmfs/{published.name}"
    files = readable_files(published)
    name = sorted(files)[0]
    p = subprocess.run(
        [
            *PARROT,
            "--debug",
            "--cache-dir",
            str(tmp_path / "c"),
            "--",
            "sha256sum",
            f"{mnt}/{name}",
        ],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert parse_sha256sum(p.stdout, mnt) == {name: files[name]}
    lines = p.stderr.decode().splitlines()
    assert "parrot_run: auto proxy: no PAC file gave a proxy, the group is dropped" in lines
    assert not any("JSERROR" in line and "auto proxy" not in line for line in lines)


def test_auto_alone_with_no_pac_answer_is_one_line(published, stratum, pacs, tmp_path):
    pacs.answers.update(FAILING_PACS)
    env = env_for(published, f"{stratum.url}/{published.name}", "auto")
    env["CVMFS_PAC_URLS"] = failing_pac_urls(pacs)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "parrot_cvmfs",
            "ls",
            "--cache-dir",
            str(tmp_path / "c"),
            published.name,
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )
    line = failed_with_one_line(p)
    assert "CVMFS_HTTP_PROXY=auto: failed to discover HTTP proxy servers" in line, line


def test_a_pac_that_never_returns_is_killed(published, stratum, pacs):
    pacs.answers["/loop.pac"] = b"function FindProxyForURL(url, host) { while (true) {} }"
    pacs.answers["/good.pac"] = pac_script("DIRECT")
    dl = Downloader(
        DownloadSettings(
            hosts=[f"{stratum.url}/{published.name}"],
            proxy="auto",
            pac_urls=f"{pacs.base}/loop.pac;{pacs.base}/good.pac",
            timeout_direct=2,
        )
    )
    assert dl.fetch("/.cvmfspublished", what="manifest")
    assert dl.path.proxy_list() == ["DIRECT"]
    assert "loop.pac: evaluating it took longer than 2 s" in dl.path.notes[0]


def test_pac_answer_translation():
    assert translate("PROXY a:1; PROXY b:2;DIRECT") == "a:1;b:2;DIRECT"
    assert translate("") == "DIRECT"
    assert translate("SOCKS s:1; PROXY  a:1 ; bogus") == "a:1"
    assert translate("SOCKS s:1") == ""


# -- CVMFS_USE_GEOAPI: a stratum 1 orders the hosts ------------------------------------------


@pytest.fixture
def two_strata(published):
    """The published repository on 127.0.0.1 and 127.0.0.2 (two host names)."""
    a, b = FaultyServer(published.stratum), FaultyServer(published.stratum, "127.0.0.2")
    with serving(a), serving(b):
        yield a, b


def geo_settings(published, a, b, **kw) -> DownloadSettings:
    hosts = [f"{a.url}/{published.name}", f"{b.url}/{published.name}"]
    return DownloadSettings(hosts=hosts, proxy="DIRECT", use_geoapi=True, **kw)


def test_geo_answer_reverses_the_hosts_python_downloader(published, two_strata):
    a, b = two_strata
    for s in (a, b):
        s.geo = GeoConfig(order=["127.0.0.2"])
    dl = Downloader(geo_settings(published, a, b))
    paths = object_paths(published, 10)
    for p in paths:
        dl.fetch(p, what=p, limit=64 << 20)
    assert dl.path.host_list()[0] == f"{b.url}/{published.name}"
    assert not stratum_objects(a)
    assert len(stratum_objects(b)) == len(paths)


def test_geo_answer_reverses_the_hosts_parrot_run(published, two_strata, tmp_path):
    a, b = two_strata
    for s in (a, b):
        s.geo = GeoConfig(order=["127.0.0.2"])
    hosts = f"{a.url}/{published.name};{b.url}/{published.name}"
    env = env_for(published, hosts, "DIRECT")
    env["CVMFS_USE_GEOAPI"] = "yes"
    mnt = f"/cvmfs/{published.name}"
    files = readable_files(published)
    script = " ".join(f"'{mnt}/{f}'" for f in files)
    p = subprocess.run(
        [*PARROT, "--cache-dir", str(tmp_path / "c"), "--", "/bin/sh", "-c", f"sha256sum {script}"],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert parse_sha256sum(p.stdout, mnt) == files
    assert not a.requests.get(f"/cvmfs/{published.name}/.cvmfspublished")
    assert not stratum_objects(a), "the host the Geo-API put second was used"
    assert len(stratum_objects(b)) > 40


HOSTILE_GEO = [
    b"2,2\n",  # not a permutation
    b"1\n",  # too few
    b"1,2,3\n",  # too many
    b"2,1,\n",
    b"0,1\n",  # 0-based
    b" 2,1\n",
    b"2;1\n",
    b"",
    b"2,1" + b"\n" * 100,
    b"2," * (1 << 20) + b"1",  # huge
]


@pytest.mark.parametrize("reply", HOSTILE_GEO, ids=range(len(HOSTILE_GEO)))
def test_hostile_geo_answer_keeps_the_configured_order(published, two_strata, reply):
    a, b = two_strata
    for s in (a, b):
        s.answers["/api/v1.0/geo/"] = reply
    dl = Downloader(geo_settings(published, a, b))
    assert dl.fetch("/.cvmfspublished", what="manifest")
    assert dl.path.host_list()[0] == f"{a.url}/{published.name}"
    assert a.requests[f"/cvmfs/{published.name}/.cvmfspublished"] == 1
    asked = [p for s in (a, b) for p in s.requests if "/api/" in p]
    assert asked and all(
        p == f"/cvmfs/{published.name}/api/v1.0/geo/x/127.0.0.1,127.0.0.2" for p in asked
    )
    assert dl.path.notes[-1] == "Geo-API: no stratum 1 gave an order, the configured order is kept"


def test_hostile_geo_answer_parrot_run(published, two_strata, tmp_path):
    a, b = two_strata
    for s in (a, b):
        s.answers["/api/v1.0/geo/"] = b"2,2\n"
    hosts = f"{a.url}/{published.name};{b.url}/{published.name}"
    env = env_for(published, hosts, "DIRECT")
    env["CVMFS_USE_GEOAPI"] = "yes"
    mnt = f"/cvmfs/{published.name}"
    name = sorted(readable_files(published))[0]
    p = subprocess.run(
        [*PARROT, "--debug", "--cache-dir", str(tmp_path / "c"), "--", "cat", f"{mnt}/{name}"],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert b"parrot_run: Geo-API: invalid answer from" in p.stderr
    assert stratum_objects(a) and not stratum_objects(b)


def test_geo_orders_the_fallback_proxies(published, two_strata):
    """Only fallback proxies (DIRECT is dropped for them): the names end with +PXYSEP+
    and the first proxy of each fallback group, and the answer orders those groups."""
    a, b = two_strata
    for s in (a, b):
        s.answers["/api/v1.0/geo/"] = b"2,1,3,5,4\n"
    fallback = "http://p1.example:3128|http://p1b.example:3128;http://p2.example:3128"
    dl = Downloader(geo_settings(published, a, b, fallback_proxy=fallback))
    assert dl.path.host_list() == [f"{b.url}/{published.name}", f"{a.url}/{published.name}"]
    assert dl.path.groups == [
        ["http://p2.example:3128"],
        ["http://p1.example:3128", "http://p1b.example:3128"],
    ]
    asked = [p for s in (a, b) for p in s.requests if "/api/" in p]
    assert asked == [
        f"/cvmfs/{published.name}/api/v1.0/geo/x/127.0.0.1,127.0.0.2,+PXYSEP+,p1.example,p2.example"
    ]


def test_geo_reply_parsing():
    assert parse_reply(b"2,1\n", 2) == [1, 0]
    assert parse_reply(b"3,1,2", 3) == [2, 0, 1]
    for bad in HOSTILE_GEO:
        assert parse_reply(bad, 2) is None, bad


def test_serve_answers_the_geo_api():
    order = GeoConfig(order=["b.org", "c.org"])
    assert geo_answer(order, "/cvmfs/r.org/api/v1.0/geo/x/a.org,b.org,c.org") == (200, b"2,3,1\n")
    assert geo_answer(order, "/cvmfs/r.org/data/ab/cd") is None
    assert geo_answer(order, "/cvmfs/r.org/api/v1.0/geo/x/a b")[0] == 400
    assert geo_answer(order, "/cvmfs/r.org/api/v1.0/geo/x/" + ",".join(["a"] * 300))[0] == 400
    assert geo_answer(None, "/cvmfs/r.org/api/v1.0/geo/x/a,b") == (200, b"1,2\n")
    # servers, then the separator in place, then the fallback proxies ordered apart
    assert geo_answer(order, "/cvmfs/r/api/v1.0/geo/x/a.org,c.org,+PXYSEP+,p.org,b.org") == (
        200,
        b"2,1,3,5,4\n",
    )
    places = GeoConfig.parse_places(
        "# name lat lon\nsquid.cern.ch 46.2 6.1\ncern.s1 46.2 6.0\nfnal.s1 41.8 -88.3\n"
        "client 41.9 -87.6\n"
    )
    assert places.rank(["cern.s1", "fnal.s1", "nowhere"], "squid.cern.ch") == [0, 1, 2]
    assert places.rank(["cern.s1", "fnal.s1", "nowhere"], "x") == [1, 0, 2]
    with pytest.raises(ValueError, match="line 1"):
        GeoConfig.parse_places("a 100 0")


def test_parrot_cvmfs_serve_geo_order(published, tmp_path):
    port = free_port()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "parrot_cvmfs",
            "serve",
            published.stratum,
            "--port",
            str(port),
            "--geo-order",
            "b.org,a.org",
        ],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(p, port, "parrot_cvmfs serve", 30)
        url = f"http://127.0.0.1:{port}/cvmfs/{published.name}/api/v1.0/geo/x/a.org,b.org"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read() == b"2,1\n"
    finally:
        p.terminate()
        p.wait(timeout=30)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "parrot_cvmfs",
            "serve",
            published.stratum,
            "--geo-places",
            str(tmp_path / "missing"),
        ],
        env=base_env(),
        capture_output=True,
        timeout=60,
    )
    assert "--geo-places" in failed_with_one_line(bad)


# -- the shipped configuration: proxies, CDN and fallback as common.conf sets them ----------

CDN = {
    "cern.ch": "http://s1cern-cvmfs.openhtc.io/cvmfs/",
    "egi.eu": "http://s1ral-cvmfs.openhtc.io/cvmfs/",
    "eessi.io": "http://s1eessieu1-cvmfs.openhtc.io/cvmfs/",
}
STRATA = {
    "cern.ch": "http://cvmfs-stratum-one.cern.ch:8000/cvmfs/",
    "egi.eu": "http://cvmfs-egi.gridpp.rl.ac.uk:8000/cvmfs/",
    "eessi.io": "http://aws-eu-central-s1.eessi.science/cvmfs/",
}
BACKUP = "http://cvmfsbproxy.cern.ch:3126;http://cvmfsbproxy.fnal.gov:3126"
REPOS = {"cern.ch": "atlas.cern.ch", "egi.eu": "biomed.egi.eu", "eessi.io": "software.eessi.io"}


@pytest.mark.parametrize("domain", sorted(REPOS))
@pytest.mark.parametrize(
    "local, env, proxy, cdn, fallback",
    [
        ("", {}, "DIRECT", True, None),  # nothing configured: Parrot's DIRECT, so the CDN
        ("CVMFS_CLIENT_PROFILE=single\n", {}, "auto;DIRECT", True, None),
        ("", {"CVMFS_CLIENT_PROFILE": "single"}, "auto;DIRECT", True, None),
        ("CVMFS_CLIENT_PROFILE=single\nCVMFS_USE_CDN=no\n", {}, "auto;DIRECT", False, BACKUP),
        ('CVMFS_HTTP_PROXY="http://sq:3128"\n', {}, "http://sq:3128", False, BACKUP),
        ("", {"CVMFS_HTTP_PROXY": "http://sq:3128"}, "http://sq:3128", False, BACKUP),
        (
            'CVMFS_HTTP_PROXY="http://sq:3128"\nCVMFS_CLIENT_PROFILE=custom\n',
            {},
            "http://sq:3128",
            False,
            None,
        ),
        ("", {"CVMFS_USE_CDN": "no"}, "DIRECT", False, BACKUP),
    ],
)
def test_shipped_profiles(tmp_path, domain, local, env, proxy, cdn, fallback):
    """The lists the real client gets from the config repository's common.conf."""
    (tmp_path / "default.local").write_text(local)
    cfg = Configuration(env={"PATH": "/usr/bin:/bin", **env}, config_dir=str(tmp_path))
    s = cfg.settings(REPOS[domain])
    assert s.get("CVMFS_HTTP_PROXY") == proxy
    assert s.get("CVMFS_FALLBACK_PROXY") == fallback
    first = (CDN if cdn else STRATA)[domain] + REPOS[domain]
    assert s.server_urls[0] == first
    assert s.flag("CVMFS_USE_GEOAPI") == (domain == "eessi.io")
    assert s.get("CVMFS_PAC_URLS").startswith("http://grid-wpad/wpad.dat;http://wpad/wpad.dat;")
    d = DownloadSettings.from_settings(s)
    assert (d.proxy, d.fallback_proxy, d.use_geoapi) == (proxy, fallback, domain == "eessi.io")
    # with fallback proxies, every DIRECT is dropped: a failing site squid falls back to them
    path = NetworkPath(d)
    if fallback:
        assert DIRECT not in path.proxy_list()
        assert path.groups[path.num_regular :] == parse_proxy_groups(fallback)
