"""Whole Debian userlands for the container tests, built with debootstrap once and
cached outside the checkout.

A tree is built into `<cache>/userlands/<suite>.partial` (log `<suite>.log`, whose
last line is "OK" once debootstrap succeeded) and renamed to `<suite>` only then, so a
directory named after the suite is always complete; `<suite>.lock` (flock) keeps two
test runs from building one suite at once. A `.partial` tree whose log says OK (a
build started by someone else with the same options) is adopted, not rebuilt.

The published repository of a tree is cached beside it (`<suite>.published/`, with
the stratum and keys), reused while the publisher's and format's sources, the tree and
the whitelist's validity say it is the same one.

The mirror is the machine's own: the first Debian main-archive entry of its apt
sources (one-line `deb` lists and deb822 `.sources`), never a name written here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time

# suite -> (Debian release, glibc version): older and newer than a current host's
SUITES = {"bullseye": ("11", "2.31"), "trixie": ("13", "2.41")}
DEBOOTSTRAP_OPTIONS = ("--variant=minbase", "--include=python3")
BUILD_TIMEOUT = 1800  # seconds one debootstrap may take (a slow mirror: a few minutes)
LOCK_WAIT = BUILD_TIMEOUT + 60  # another run building the same suite
LOG_QUIET = 180  # a log untouched this long belongs to a build that is gone

# Debian's code names and aliases: an apt entry for one of these is a Debian archive
DEBIAN_SUITES = frozenset(
    "buster bullseye bookworm trixie forky duke sid oldoldstable oldstable stable testing"
    " unstable experimental".split()
)


class UserlandUnavailable(Exception):
    """This machine cannot build a userland (no debootstrap, not root, no mirror): the
    tests that need one are skipped, with this text."""


class UserlandBuildFailed(Exception):
    """debootstrap ran and failed; the text names the log."""


def cache_dir() -> str:
    """Where built userlands live (outside the checkout, kept between runs)."""
    base = os.environ.get("PARROT_CVMFS_TEST_CACHE") or "/var/tmp/parrot-cvmfs-test-cache"
    return os.path.join(base, "userlands")


# -- the mirror -----------------------------------------------------------------------------------


def _one_line_entries(text: str):
    """(uri, suites, components) of each `deb` line of a sources.list."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield words[0], words[1:2], words[2:]


def _deb822_entries(text: str):
    """(uri, suites, components) of each enabled `Types: deb` stanza of a .sources."""
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:  # a continuation line
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites, comps = fields.get("suites", "").split(), fields.get("components", "").split()
        for uri in fields.get("uris", "").split():
            yield uri, suites, comps


def debian_mirror(apt_dir: str = "/etc/apt") -> str | None:
    """The URI of the first Debian main archive in the apt sources below `apt_dir`
    (sources.list, then sources.list.d/*.list and *.sources in name order), or None.

    A main archive is an entry for a Debian suite (not its -security or -updates
    pocket) with the `main` component."""
    files = [os.path.join(apt_dir, "sources.list")]
    d = os.path.join(apt_dir, "sources.list.d")
    try:
        files += [os.path.join(d, n) for n in sorted(os.listdir(d))]
    except OSError:
        pass
    for path in files:
        if path.endswith(".list"):
            parse = _one_line_entries
        elif path.endswith(".sources"):
            parse = _deb822_entries
        else:
            continue  # .disabled, .save, editor backups: apt ignores them too
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 20)
        except OSError:
            continue
        for uri, suites, comps in parse(text):
            if "main" in comps and any(s in DEBIAN_SUITES for s in suites):
                return uri.rstrip("/")
    return None


# -- building ---------------------------------------------------------------------------------------


def _log_says_ok(log: str) -> bool:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 256))
            tail = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return False
    return bool(tail) and tail[-1].strip() == "OK"


def _looks_complete(tree: str, suite: str) -> bool:
    release = SUITES[suite][0]
    try:
        with open(os.path.join(tree, "etc/debian_version")) as f:
            version = f.read().strip()
    except OSError:
        return False
    # trixie's file said "trixie/sid" before its release: the major number or the name
    return (version.startswith(release) or suite in version) and os.path.lexists(
        os.path.join(tree, "usr/bin/python3")
    )


def _wait_for_foreign_build(log: str) -> None:
    """A build we did not start (no lock) may still be writing `.partial`: wait while its
    log grows, until it says OK or falls quiet (bounded by BUILD_TIMEOUT)."""
    deadline = time.monotonic() + BUILD_TIMEOUT
    while time.monotonic() < deadline and not _log_says_ok(log):
        try:
            quiet = time.time() - os.stat(log).st_mtime
        except OSError:
            return
        if quiet > LOG_QUIET:
            return
        time.sleep(5)


def _debootstrap(suite: str, partial: str, log: str) -> None:
    if os.geteuid() != 0:
        raise UserlandUnavailable("building a Debian userland needs root (debootstrap)")
    exe = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else None
    )
    if exe is None:
        raise UserlandUnavailable("debootstrap is not installed (see .ci/system-packages)")
    mirror = debian_mirror()
    if mirror is None:
        raise UserlandUnavailable("no Debian archive in the apt sources (/etc/apt)")
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.monotonic()
    with open(log, "wb") as out:
        try:
            p = subprocess.run(
                [exe, *DEBOOTSTRAP_OPTIONS, suite, partial, mirror],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT,
            )
            ok = p.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if ok:  # the build time, for the report; then the line that marks success
            out.write(f"built in {time.monotonic() - t0:.0f} s\nOK\n".encode())
    if not ok:
        raise UserlandBuildFailed(f"debootstrap {suite} from {mirror} failed: see {log}")


@contextlib.contextmanager
def _locked(path: str, what: str):
    """An exclusive flock on `path` for the block, waited for at most LOCK_WAIT."""
    with open(path, "a") as lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserlandBuildFailed(
                        f"another run has been making {what} for too long ({path})"
                    ) from None
                time.sleep(2)
        yield


def ensure_userland(suite: str) -> str:
    """The path of a complete `suite` tree (see SUITES), built or adopted if needed."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}")
    root = cache_dir()
    tree = os.path.join(root, suite)
    if _looks_complete(tree, suite):
        return tree
    os.makedirs(root, exist_ok=True)
    partial, log = f"{tree}.partial", f"{tree}.log"
    with _locked(f"{tree}.lock", suite):
        if _looks_complete(tree, suite):  # built by the run that held the lock
            return tree
        if os.path.lexists(tree):  # incomplete under the final name: never trust it
            shutil.rmtree(tree)
        _wait_for_foreign_build(log)
        if not (_log_says_ok(log) and _looks_complete(partial, suite)):
            _debootstrap(suite, partial, log)
        os.rename(partial, tree)
    return tree


PUBLISHED_MAX_AGE = 7 * 86400  # well inside the whitelist's 30 days


def _publish_key(tree: str) -> str:
    """What a cached publication of `tree` must match: our publisher's and format's
    sources, and the tree itself (its root and its release file)."""
    import parrot_cvmfs

    pkg = os.path.dirname(os.path.abspath(parrot_cvmfs.__file__))
    h = hashlib.sha256()
    for sub in ("server", "format"):
        d = os.path.join(pkg, sub)
        for name in sorted(os.listdir(d)):
            if name.endswith(".py"):
                with open(os.path.join(d, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    s = os.stat(tree)
    h.update(f"{s.st_ino}:{s.st_mtime_ns}".encode())
    with open(os.path.join(tree, "etc/debian_version"), "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def published_userland(suite: str, tree: str, publish) -> tuple[str, str, bool]:
    """(stratum, keys directory, whether it was published now) of `tree` published
    by `publish(stratum, keys)` as this suite's repository, cached beside the tree."""
    base = os.path.join(cache_dir(), f"{suite}.published")
    stratum, keys, stamp = f"{base}/stratum", f"{base}/keys", f"{base}/stamp"
    key = _publish_key(tree)

    def fresh() -> bool:
        try:
            with open(stamp) as f:
                same = f.read().strip() == key
            return same and time.time() - os.stat(stamp).st_mtime < PUBLISHED_MAX_AGE
        except OSError:
            return False

    if fresh():
        return stratum, keys, False
    os.makedirs(cache_dir(), exist_ok=True)
    with _locked(f"{base}.lock", f"the {suite} repository"):
        if fresh():
            return stratum, keys, False
        partial = f"{base}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        try:
            publish(f"{partial}/stratum", f"{partial}/keys")
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        with open(f"{partial}/stamp", "w") as f:
            f.write(key + "\n")
        shutil.rmtree(base, ignore_errors=True)
        os.rename(partial, base)
    return stratum, keys, True
