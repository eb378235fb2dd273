"""parrot_run as an unprivileged user (`nobody`), as our users run it: permission
checks answered from the catalog (root would pass them all), ownership claimed or as
published, a non-dumpable launcher refused with one line.

Everything nobody touches lives in a world-readable scratch directory: a copy of the
package and of the packages it imports, the repository, its key and the cache. The
interpreter is this one if nobody can run it, else the system's of the same version."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .conftest import base_env, repo_spec

pytestmark = [pytest.mark.tracer, pytest.mark.unprivileged]

NOBODY = 65534
NAME = "perm.test.org"
# what the copied runtime needs: the package and what it imports at run time
RUNTIME = [
    "parrot_cvmfs",
    "cffi",
    "_cffi_backend",
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "sniffio",
    "idna",
    "certifi",
    "cryptography",
    "typing_extensions",
    "exceptiongroup",
]
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def _copy_runtime(dest: str) -> None:
    import importlib.util

    for name in RUNTIME:
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        if spec.submodule_search_locations:
            src = list(spec.submodule_search_locations)[0]
            shutil.copytree(
                src,
                os.path.join(dest, name),
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "tests"),
            )
        elif spec.origin:
            shutil.copy2(spec.origin, dest)


def _interpreter_for_nobody() -> str:
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (
        os.path.realpath(sys.executable),
        f"/usr/bin/python{want}",
        f"/usr/local/bin/python{want}",
    ):
        p = subprocess.run(
            [*AS_NOBODY, cand, "-c", "import sys; print(sys.version[:4])"], capture_output=True
        )
        if p.returncode == 0 and p.stdout.decode().startswith(want):
            return cand
    pytest.fail(f"no Python {want} interpreter that user nobody can run (install python{want})")


@pytest.fixture(scope="module")
def scratch():
    d = tempfile.mkdtemp(prefix="parrot-nobody.")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def perm_repo(scratch):
    """A repository whose entries have every kind of permission."""
    src = os.path.join(scratch, "tree")
    os.makedirs(src)
    files = {
        "f000": 0o000,
        "f400": 0o400,
        "f600": 0o600,
        "f644": 0o644,
        "noexec.sh": 0o644,
        "exec.sh": 0o755,
        "f604": 0o604,
        "f640": 0o640,
    }
    for name, mode in files.items():
        with open(os.path.join(src, name), "w") as f:
            f.write("#!/bin/sh\necho ran\n" if name.endswith(".sh") else f"{name}\n")
        os.chmod(os.path.join(src, name), mode)
    dirs = {"d000": 0o000, "d700": 0o700, "d711": 0o711, "d755": 0o755, "d750": 0o750}
    for name, mode in dirs.items():
        os.makedirs(os.path.join(src, name))
        with open(os.path.join(src, name, "inside"), "w") as f:
            f.write("inside\n")
        os.chmod(os.path.join(src, name), mode)
    stratum, keys = os.path.join(scratch, "stratum"), os.path.join(scratch, "keys")
    publish(PublishOptions(source=src, name=NAME, stratum=stratum, keys_dir=keys))
    for root, dirs, fs in os.walk(scratch):
        for n in dirs + fs:
            p = os.path.join(root, n)
            if not os.path.islink(p) and not p.startswith(src + "/"):
                os.chmod(
                    p, os.stat(p).st_mode | stat.S_IROTH | (stat.S_IXOTH if os.path.isdir(p) else 0)
                )
    srv = StratumServer(stratum)
    srv.start_background()
    yield srv.url, os.path.join(keys, f"{NAME}.pub")
    srv.shutdown()


@pytest.fixture(scope="module", params=["notify", "ptrace"])
def nobody(scratch, perm_repo, request):
    """Runs a command under parrot_run as nobody; returns (returncode, stdout, stderr)."""
    runtime = os.path.join(scratch, "runtime")
    if not os.path.isdir(runtime):
        os.makedirs(runtime)
        _copy_runtime(runtime)
        subprocess.run(["chmod", "-R", "a+rX", runtime], check=True)
    python = _interpreter_for_nobody()
    cache = os.path.join(scratch, f"cache-{request.param}")
    os.makedirs(cache, exist_ok=True)
    os.chown(cache, NOBODY, NOBODY)
    url, pubkey = perm_repo
    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(NAME, f"{url}/{NAME}", pubkey),
        PYTHONPATH=runtime,
        HOME=cache,
        PARROT_CVMFS_MODE=request.param,
        LC_ALL="C",
        PYTHONDONTWRITEBYTECODE="1",
    )

    def run(
        script: str,
        extra_env: dict | None = None,
        prelude: str = "",
        groups: str = "",
        gid: int = NOBODY,
        options: tuple[str, ...] = (),
    ):
        e = dict(env)
        e.update(extra_env or {})
        code = (
            f"{prelude}import sys; from parrot_cvmfs.tracer.main import main; "
            f"sys.exit(main(['--cache-dir', {cache!r}, *{list(options)!r}, '--', '/bin/sh',"
            f" '-c', {script!r}]))"
        )
        user = [AS_NOBODY[0], AS_NOBODY[1], f"--regid={gid}"]
        user += [f"--groups={groups}" if groups else "--clear-groups", "--"]
        p = subprocess.run(
            [*user, python, "-c", code], env=e, capture_output=True, timeout=300, cwd="/"
        )
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    return run


MNT = f"/cvmfs/{NAME}"
CHECKS = (
    f"cd {MNT}; for f in f000 f400 f600 f644 f604 d000/inside d700/inside d711/inside "
    'd755/inside; do if cat $f >/dev/null 2>&1; then echo "read $f ok"; else echo "read $f no"; fi; '
    'done; for d in d000 d700 d711 d755; do if ls $d >/dev/null 2>&1; then echo "list $d ok"; '
    'else echo "list $d no"; fi; if (cd $d) 2>/dev/null; then echo "enter $d ok"; '
    'else echo "enter $d no"; fi; done; for f in f644 exec.sh; do test -r $f && echo "r $f"; '
    'test -w $f && echo "w $f"; test -x $f && echo "x $f"; done; ./exec.sh; ./noexec.sh; '
    "echo \"noexec rc $?\"; stat -c '%n %u %g %a' f600 d700"
)


def expect(lines: list[str], read: str, dirs: str) -> None:
    """`read`: "PATH ok|no, ..." for cat; `dirs`: "DIR LIST ENTER, ..." for ls and cd."""
    for item in read.split(", "):
        assert f"read {item}" in lines, (item, lines)
    for item in dirs.split(", "):
        d, ls, cd = item.split()
        assert f"list {d} {ls}" in lines and f"enter {d} {cd}" in lines, (item, lines)


def test_permissions_with_claimed_ownership(nobody):
    """CVMFS_CLAIM_OWNERSHIP=yes (the default): everything is nobody's, the owner bits
    decide, and no bit set means no access (root would have had it)."""
    rc, out, err = nobody(CHECKS)
    assert nobody(CHECKS)[1] == out  # again, answered from the kept answers
    lines = out.splitlines()
    expect(
        lines,
        read="f000 no, f400 ok, f600 ok, f644 ok, f604 ok, d000/inside no, d700/inside ok, "
        "d711/inside ok, d755/inside ok",
        dirs="d000 no no, d700 ok ok, d711 ok ok, d755 ok ok",
    )
    assert "r f644" in lines and "w f644" not in lines and "x f644" not in lines
    assert "r exec.sh" in lines and "x exec.sh" in lines and "w exec.sh" not in lines
    assert "ran" in lines and "noexec rc 126" in lines, (out, err)
    assert f"f600 {NOBODY} {NOBODY} 600" in lines and f"d700 {NOBODY} {NOBODY} 700" in lines


def test_permissions_as_published(nobody):
    """CVMFS_CLAIM_OWNERSHIP=no: files keep the publisher's owner (root), and nobody
    gets the bits for others."""
    rc, out, err = nobody(CHECKS, {"CVMFS_CLAIM_OWNERSHIP": "no"})
    assert nobody(CHECKS, {"CVMFS_CLAIM_OWNERSHIP": "no"})[1] == out
    lines = out.splitlines()
    expect(
        lines,
        read="f000 no, f400 no, f600 no, f644 ok, f604 ok, d000/inside no, d700/inside no, "
        "d711/inside ok, d755/inside ok",
        dirs="d000 no no, d700 no no, d711 no ok, d755 ok ok",
    )
    assert "f600 0 0 600" in lines and "d700 0 0 700" in lines, out


def test_kept_answers_are_per_group_set(nobody):
    """With the owners as published, a group's bits decide for its members: what a run
    in the group (root's, 0) could read, a later run of the same user outside it cannot,
    and back, though every run keeps its answers in the same cache."""
    script = (
        f"cd {MNT}; for f in f640 d750/inside; do cat $f >/dev/null 2>&1 && echo $f ok "
        "|| echo $f no; done; ls d750 >/dev/null 2>&1 && echo list ok || echo list no"
    )
    owners = {"CVMFS_CLAIM_OWNERSHIP": "no"}
    member, outsider = (
        ["f640 ok", "d750/inside ok", "list ok"],
        ["f640 no", "d750/inside no", "list no"],
    )
    for groups, want in [("0", member), ("", outsider), ("0", member), ("", outsider)]:
        rc, out, err = nobody(script, owners, groups=groups)
        assert out.splitlines() == want, (groups, out, err)
    # claimed ownership (the default) shows the user's gid: the kept answers are the gid's
    shown = f"stat -c %g {MNT}/f644 {MNT}/d755; ls -ln {MNT} | awk 'NR > 1 {{print $4}}' | sort -u"
    for gid in [NOBODY, 4242, NOBODY, 4242]:
        rc, out, err = nobody(shown, gid=gid)
        assert out.split() == [str(gid)] * 3, (gid, out, err)


def test_permissions_in_a_guest_namespace(nobody, tmp_path):
    """The same checks through binds (-M): a guest's walk of a /cvmfs directory needs
    its x bit as the kernel's would, at the bind's place and at /cvmfs alike."""
    owners = {"CVMFS_CLAIM_OWNERSHIP": "no"}
    rc, want, err = nobody(CHECKS, owners)
    for top in ("/vx", MNT):
        rc, out, err = nobody(CHECKS.replace(MNT, top), owners, options=("-M", f"/vx={MNT}"))
        assert out == want, (top, out, err)
    script = "stat -c %F /vx/d700/inside /vx/d700/. /vx/d711/inside 2>&1 | sed 's/.*: //'"
    rc, out, err = nobody(script, owners, options=("-M", f"/vx={MNT}"))
    assert out.splitlines() == ["Permission denied"] * 2 + ["regular file"], (out, err)


def test_non_dumpable_launcher_is_refused(nobody):
    """A launcher that made parrot_run non-dumpable (a setuid wrapper, say): ptrace is
    refused for an unprivileged user, and parrot_run says so in one line."""
    rc, out, err = nobody(
        f"cat {MNT}/f644", prelude="import ctypes; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); "
    )
    assert rc == 1 and out == "", err
    assert (
        err.startswith(
            "parrot_run: cannot trace the job: Operation not permitted (parrot_run is not dumpable"
        )
        and err.count("\n") == 1
    ), err
