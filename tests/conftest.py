from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .servers import FaultyServer, Nginx, serving
from .treegen import make_tree
from .userlands import (
    SUITES,
    UserlandBuildFailed,
    UserlandUnavailable,
    ensure_userland,
    published_userland,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def _find_shared() -> str | None:
    """The real CernVM-FS data (../shared/cvmfs-data beside the checkout), or None.

    PARROT_CVMFS_SHARED_DATA, when set, is the only place looked at (set it to a
    missing directory to run without the real data)."""
    env = os.environ.get("PARROT_CVMFS_SHARED_DATA")
    candidates = (
        [env]
        if env is not None
        else [os.path.join(HERE, "..", "..", "shared", "cvmfs-data"), "/work/shared/cvmfs-data"]
    )
    for c in candidates:
        if c and os.path.isdir(os.path.join(c, "real-repos")):
            return os.path.normpath(c)
    return None


# Paths below the real data; they name nothing when it is missing, and the tests that
# read them ask for the `shared_data` fixture (which skips them then).
_SHARED = _find_shared()
SHARED = _SHARED or "/nonexistent-parrot-cvmfs-shared-data"
REAL_REPOS = os.path.join(SHARED, "real-repos")
REAL_MANIFESTS = os.path.join(SHARED, "real-manifests")
NO_SHARED_DATA = (
    "real CernVM-FS test data not found: set PARROT_CVMFS_SHARED_DATA to the cvmfs-data directory"
)

# A test that uses one of these fixtures gets the marker: `-m "not nginx"` etc. select
# by what a test needs, and a new test needing nginx is marked by asking for it.
FIXTURE_MARKERS = {
    "shared_data": "real_data",
    "mode": "tracer",  # "notify" / "ptrace": the two ways parrot_run answers
    "nginx_published": "nginx",
    "nginx_pair": "nginx",
    "squids": "squid",
    "bundled": "slow",  # a preload and a bundle of the published tree, then unbundled
    "userland": "userland",  # a debootstrapped Debian, published and served
    "userlands": "userland",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_configure(config):
    """Jobs get SIGINT, SIGQUIT and SIGHUP as a terminal's job has them: a suite started
    in the background of a shell (`&`, nohup) inherits them ignored, every process it
    starts would too, and an ignored signal never reaches parrot_run to be passed on."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_IGN:
            # a Python handler, not SIG_DFL: exec resets it to the default in children
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else _exit)


def _exit(signum, frame):
    raise SystemExit(128 + signum)


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def shared_data() -> str:
    """The real data directory; skips the test when it is missing."""
    if _SHARED is None:
        pytest.skip(NO_SHARED_DATA)
    return _SHARED


def _parrot_run() -> list[str]:
    """How tests run parrot_run: the installed command of this venv (the C launcher,
    csrc/launcher/, where it was built), else the module as the Python script runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "parrot_run")
    try:
        with open(exe, "rb") as f:
            if f.read(4) == b"\x7fELF":
                return [exe]
    except OSError:
        pass
    return [sys.executable, "-m", "parrot_cvmfs.tracer.main"]


PARROT_RUN = _parrot_run()


def base_env(**extra) -> dict[str, str]:
    """A clean environment: no proxies or cvmfs settings from the developer's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CVMFS_", "PARROT_CVMFS"))
        and k.lower() not in ("http_proxy", "https_proxy")
        # `make test` exports its own state; a make run by a test must not inherit it
        and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKE_TERMOUT", "MAKE_TERMERR")
    }
    env["PARROT_CVMFS_CONFIG_DIR"] = "/nonexistent-parrot-cvmfs-config"
    env.update(extra)
    return env


def failed_with_one_line(p: subprocess.CompletedProcess) -> str:
    """The one line a failed run wrote to stderr (asserting that it failed and wrote
    exactly one)."""
    assert p.returncode != 0, (p.returncode, p.stderr)
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def read_pty(primary: int) -> bytes:
    """All a pty's other side writes until it is closed (then the read fails with EIO)."""
    out = b""
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        out += data
    return out


def sha256_tree(src: str) -> dict[str, str]:
    """sha256 of every regular file below `src`, by path relative to it."""
    import hashlib

    out = {}
    for dp, _, fs in os.walk(src):
        for f in fs:
            p = os.path.join(dp, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, src)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def parse_sha256sum(out: bytes, root: str = ".") -> dict[str, str]:
    """`sha256sum` output (lines ended by NUL with --zero, else by newlines) as
    {path relative to `root`: digest}."""
    text = out.decode("utf-8", "surrogateescape")
    lines = text.split("\0")[:-1] if "\0" in text else text.splitlines()
    res = {}
    for line in lines:
        digest, path = line.split("  ", 1)
        res[os.path.relpath(path, root)] = digest
    return res


def repo_spec(name: str, url: str, pubkey: str, **opts) -> str:
    extra = "".join(f",{k}={v}" for k, v in opts.items())
    return f"{name}:url={url},pubkey={pubkey}{extra}"


def published_env(published: Published, url: str, **opts) -> dict[str, str]:
    """A clean environment naming the published repository, served at `url`."""
    return base_env(
        PARROT_CVMFS_REPO=repo_spec(
            published.name, f"{url}/{published.name}", published.pubkey, **opts
        )
    )


class Cli:
    """Runs `python -m parrot_cvmfs` as a subprocess, as a user would."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def __call__(self, *args, input=None, env=None, check=False, timeout=300):
        e = dict(self.env)
        e.update(env or {})
        p = subprocess.run(
            [sys.executable, "-m", "parrot_cvmfs", *map(str, args)],
            env=e,
            capture_output=True,
            input=input,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"parrot_cvmfs {args} failed: {p.stderr.decode()}")
        return p

    def find_json(self, *args) -> list[dict]:
        p = self("find", *args, "--json", check=True)
        return [json.loads(line) for line in p.stdout.decode().splitlines()]


@pytest.fixture(scope="session")
def real_strata(shared_data, tmp_path_factory):
    """A directory serving the real repositories under their names."""
    d = tmp_path_factory.mktemp("real-strata")
    for name in ("ref.test.org", "ref-shake.test.org", "test.cern.ch"):
        os.symlink(os.path.join(REAL_REPOS, name, "stratum"), d / name)
    return str(d)


@pytest.fixture(scope="session")
def real_server(real_strata):
    with serving(StratumServer(real_strata)) as srv:
        yield srv


@pytest.fixture(scope="session")
def real_env(real_server):
    specs = [
        repo_spec(
            "ref.test.org",
            f"{real_server.url}/ref.test.org",
            os.path.join(REAL_REPOS, "ref.test.org", "ref.test.org.pub"),
        ),
        repo_spec(
            "ref-shake.test.org",
            f"{real_server.url}/ref-shake.test.org",
            os.path.join(REAL_REPOS, "ref-shake.test.org", "ref-shake.test.org.pub"),
        ),
        repo_spec(
            "test.cern.ch",
            f"{real_server.url}/test.cern.ch",
            os.path.join(REAL_REPOS, "test.cern.ch", "test.cern.ch.pub"),
        ),
    ]
    return base_env(PARROT_CVMFS_REPO=" ".join(specs))


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp("tree") / "src"))


class Published:
    def __init__(self, src, stratum, keys, name, result):
        self.src, self.stratum, self.keys, self.name, self.result = src, stratum, keys, name, result

    @property
    def pubkey(self) -> str:
        return os.path.join(self.keys, f"{self.name}.pub")

    def copy(self, dest: str) -> Published:
        """A private copy of the stratum (for tampering)."""
        shutil.copytree(self.stratum, dest, symlinks=True)
        return Published(self.src, dest, self.keys, self.name, self.result)


@pytest.fixture(scope="session")
def published(source_tree, tmp_path_factory):
    """The generated tree published once per session by our publisher."""
    base = tmp_path_factory.mktemp("published")
    stratum, keys = str(base / "stratum"), str(base / "keys")
    result = publish(
        PublishOptions(
            source=source_tree, name="round.test.org", stratum=stratum, keys_dir=keys, tag="first"
        )
    )
    return Published(source_tree, stratum, keys, "round.test.org", result)


@pytest.fixture(scope="session")
def published_server(published):
    with serving(FaultyServer(published.stratum)) as srv:
        yield srv


@pytest.fixture(scope="session")
def nginx_published(published, tmp_path_factory):
    n = Nginx(published.stratum, str(tmp_path_factory.mktemp("nginx")))
    yield n
    n.stop()


def make_cli(env) -> Cli:
    return Cli(env)


class Userland:
    """A Debian userland (tests/userlands.py): the host tree and the same tree published
    by our publisher as `name`, served at `url`; `env` names it for parrot_run."""

    def __init__(self, suite: str, tree: str, published: Published, url: str):
        self.suite, self.tree, self.published, self.url = suite, tree, published, url
        self.release, self.glibc = SUITES[suite]
        self.name = published.name
        self.cvmfs = f"/cvmfs/{self.name}"  # the tree as the job sees it
        self.env = published_env(published, url)


@pytest.fixture(scope="session")
def userlands():
    """userlands(suite) -> Userland: built and published (or both taken from the cache,
    tests/userlands.py), served for the session; tests must not write into its tree;
    skips when this machine cannot build one (not root, no debootstrap)."""
    made: dict[str, Userland] = {}
    with contextlib.ExitStack() as stack:

        def get(suite: str) -> Userland:
            if suite not in made:
                try:
                    tree = ensure_userland(suite)
                except UserlandUnavailable as e:
                    pytest.skip(str(e))
                except UserlandBuildFailed as e:
                    pytest.fail(str(e))
                name = f"{suite}.test.org"
                stratum, keys, _ = published_userland(
                    suite,
                    tree,
                    lambda stratum, keys: publish(
                        PublishOptions(source=tree, name=name, stratum=stratum, keys_dir=keys)
                    ),
                )
                srv = stack.enter_context(serving(StratumServer(stratum)))
                # cached publications keep no PublishResult: result is None
                made[suite] = Userland(
                    suite, tree, Published(tree, stratum, keys, name, None), srv.url
                )
            return made[suite]

        yield get


@pytest.fixture(scope="session", params=sorted(SUITES))
def userland(request, userlands) -> Userland:
    """Each Debian userland in turn (glibc older and newer than the host's)."""
    return userlands(request.param)
