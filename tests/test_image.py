"""Images as apptainer runs them (parrot_cvmfs/container/image.py): the environment
from a hand-made image directory's /.singularity.d/env scripts, the runscript, and
the evaluator checked against a real /bin/sh on the constructs it evaluates."""

from __future__ import annotations

import os
import subprocess

import pytest

from parrot_cvmfs.container.image import (
    DEFAULT_PATH,
    HostRoot,
    ImageError,
    ShellEnv,
    env_scripts,
    job_environment,
    run_command,
)

DOCKER = """#!/bin/sh
export PATH="/opt/conda/bin:/usr/local/bin:/usr/bin"
export LANG="${LANG:-"C.UTF-8"}"
export MYVAR="${MYVAR:-"image"}"
"""
BASE_OLD = """# Singularity 2.x style
if test -z "$SINGULARITY_INIT"; then
    PS1="Singularity> "
    SINGULARITY_INIT=1
    export PS1 SINGULARITY_INIT
fi
"""
ENVIRONMENT = """#!/bin/sh
# Custom environment shell code should follow
export FOO=bar BAZ='two words'
HIDDEN=not-exported
if [ -d /opt/tool ]; then
    export TOOL=/opt/tool
elif [ -d /usr ]; then
    export TOOL=none
else
    export TOOL=never
fi
[ -n "$FOO" ] && export AND=yes || export AND=no
export KERNEL=$(uname -r)
export EMPTY=
unset TERM_FROM_IMAGE
export LIST="${FOO}:${UNDEFINED-}:\\$literal"
"""
BASE = """#!/bin/sh
if [ -z "$LD_LIBRARY_PATH" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
PS1="Apptainer> "
export LD_LIBRARY_PATH PS1
"""


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


@pytest.fixture
def image(tmp_path):
    root = tmp_path / "image"
    env = root / ".singularity.d" / "env"
    write(env / "01-base.sh", BASE_OLD)
    write(env / "10-docker2singularity.sh", DOCKER)
    write(env / "90-environment.sh", ENVIRONMENT)
    write(env / "99-base.sh", BASE)
    write(env / "notes.txt", "export NOT_A_SCRIPT=1\n")
    # a script that is an absolute link: resolved in the image, not on the host
    write(root / "etc" / "profile.d" / "extra.sh", "export EXTRA=from-image\n")
    os.symlink("/etc/profile.d/extra.sh", env / "95-extra.sh")
    write(root / ".singularity.d" / "runscript", '#!/bin/sh\nexec echo run "$@"\n', 0o755)
    (root / "opt" / "tool").mkdir(parents=True)
    (root / "usr").mkdir()
    return str(root)


HOST = {
    "HOME": "/home/u",
    "USER": "u",
    "PWD": "/home/u/work",
    "LANG": "en_US.UTF-8",
    "MYVAR": "host",
    "FOO": "host-foo",
    "EMPTY": "host-empty",
    "PATH": "/host/bin:/usr/bin",
    "LD_LIBRARY_PATH": "/host/lib",
    "APPTAINER_BINDPATH": "/data",
    "SINGULARITY_CACHEDIR": "/c",
    "APPTAINERENV_OVR": "apptainer",
    "SINGULARITYENV_OVR": "singularity",
    "SINGULARITYENV_SING": "s",
}


def test_scripts_in_order_and_links_resolved_in_the_image(image):
    root = HostRoot(image)
    assert [os.path.basename(p) for p in env_scripts(root)] == [
        "01-base.sh", "10-docker2singularity.sh", "90-environment.sh", "95-extra.sh", "99-base.sh"
    ]  # fmt: skip


def test_environment_as_apptainer_exec_builds_it(image):
    warnings: list[str] = []
    env = job_environment(HostRoot(image), HOST, [("FOO", "user")], warnings.append)
    # the image's values beat the host's (the scripts ran on an emptied environment)
    assert env["LANG"] == "C.UTF-8" and env["MYVAR"] == "image"
    # the user's --env beats both; APPTAINERENV_ beats SINGULARITYENV_
    assert env["FOO"] == "user" and env["OVR"] == "apptainer" and env["SING"] == "s"
    # host variables the scripts did not define come back
    assert env["USER"] == "u" and env["HOME"] == "/home/u" and env["PWD"] == "/home/u/work"
    # apptainer's own variables and the host's LD_LIBRARY_PATH never pass
    assert not {"APPTAINER_BINDPATH", "SINGULARITY_CACHEDIR", "APPTAINERENV_OVR"} & set(env)
    assert env["SINGULARITY_INIT"] == "1"  # the image's own may be set
    assert env["LD_LIBRARY_PATH"] == "/.singularity.d/libs"
    # docker's PATH, with the default entries it lacked appended (fixpath)
    assert (
        env["PATH"] == "/opt/conda/bin:/usr/local/bin:/usr/bin:/usr/local/sbin:/usr/sbin:/sbin:/bin"
    )
    # file tests look in the image: /opt/tool is there, not on the host
    assert env["TOOL"] == "/opt/tool" and env["AND"] == "yes"
    assert env["BAZ"] == "two words" and env["EXTRA"] == "from-image"
    assert env["LIST"] == "bar::$literal" and env["PS1"] == "Apptainer> "
    assert "HIDDEN" not in env and "NOT_A_SCRIPT" not in env
    # a host variable the scripts emptied is gone; what nobody can evaluate is named
    assert "EMPTY" not in env and "KERNEL" not in env
    assert warnings == [
        "/.singularity.d/env/90-environment.sh:13: command substitution is not evaluated:"
        " statement skipped"
    ]


def test_user_path_and_protected_names(image):
    root = HostRoot(image)
    env = job_environment(root, HOST, [("PREPEND_PATH", "/pre"), ("APPEND_PATH", "/app")])
    assert env["PATH"].startswith("/pre:/opt/conda/bin:") and env["PATH"].endswith(":/bin:/app")
    env = job_environment(root, HOST, [("PATH", "/only"), ("HOME", "/elsewhere")])
    assert env["PATH"] == "/only" and env["HOME"] == "/home/u"
    env = job_environment(root, HOST, [("LD_LIBRARY_PATH", "/mine")])
    assert env["LD_LIBRARY_PATH"] == "/mine:/.singularity.d/libs"


def test_bare_root_passes_the_host_environment(tmp_path):
    (tmp_path / "bin").mkdir()
    root = HostRoot(str(tmp_path))
    env = job_environment(root, HOST, [("X", "1")])
    assert env["PATH"] == DEFAULT_PATH and env["X"] == "1" and env["OVR"] == "apptainer"
    assert env["LANG"] == "en_US.UTF-8" and env["FOO"] == "host-foo"
    assert "LD_LIBRARY_PATH" not in env and "APPTAINER_BINDPATH" not in env
    assert job_environment(root, HOST, [("PATH", "/p")])["PATH"] == "/p"


def test_legacy_environment_file(tmp_path):
    write(tmp_path / "environment", "export OLD=1\nPATH=/old/bin\n")
    env = job_environment(HostRoot(str(tmp_path)), HOST)
    assert env["OLD"] == "1"
    assert env["PATH"] == "/old/bin:" + DEFAULT_PATH


def test_runscript_then_apptainer_then_sh(image, tmp_path):
    assert run_command(HostRoot(image), ["a"]) == ["/.singularity.d/runscript", "a"]
    bare = tmp_path / "bare"
    write(bare / "bin" / "sh", "", 0o755)
    assert run_command(HostRoot(str(bare)), []) == ["/bin/sh"]
    os.chmod(bare / "bin" / "sh", 0o644)
    with pytest.raises(ImageError, match="no runscript"):
        run_command(HostRoot(str(bare)), [])


def test_broken_scripts_are_skipped_with_one_line_each(tmp_path):
    env_dir = tmp_path / ".singularity.d" / "env"
    write(env_dir / "10-a.sh", 'if [ -z "$X" ]; then\n export A=1\n')  # no fi
    write(env_dir / "20-b.sh", "export B='unterminated\n")
    write(env_dir / "30-c.sh", "ls | wc -l\nfi\nexport C=1\n")
    (env_dir / "40-dir.sh").mkdir()
    write(env_dir / "50-d.sh", "export D=" + "x" * (2 << 20) + "\n")  # over the bound
    warnings: list[str] = []
    env = job_environment(HostRoot(str(tmp_path)), {"HOME": "/h"}, (), warnings.append)
    assert "C" not in env  # the script stops at its broken structure
    assert "D" not in env
    assert [w.split(":")[0] for w in warnings] == [
        "/.singularity.d/env/10-a.sh",
        "/.singularity.d/env/20-b.sh",
        "/.singularity.d/env/30-c.sh",
        "/.singularity.d/env/30-c.sh",
        "/.singularity.d/env/50-d.sh",
    ]
    assert all("\n" not in w for w in warnings)


SUBSET = r"""
A=plain
B="dq $A ${A}x"
C='sq $A'
D=${UNSET:-default}
E=${A:+alt}
F=${UNSET-dash}
G=${EMPTY:-empty-default}
H=${EMPTY-kept-empty}
: ${I:=assigned}
J="nested ${UNSET:-"in quotes"} end"
K=esc\ aped\$x
L="${#A}"
if [ "$A" = plain ] && [ -z "$EMPTY" ]; then M=then; else M=else; fi
if test 3 -gt 5; then N=gt; elif ! test -n ""; then N=elif; fi
[ -n "$UNSET" ] || O=or
unset A
P="${A-gone}"
"""


def test_evaluator_agrees_with_sh(tmp_path):
    names = "B C D E F G H I J K L M N O P".split()
    script = tmp_path / "s.sh"
    script.write_text(SUBSET)
    driver = ". ./s.sh; " + "; ".join(f"printf '%s\\0' \"${n}\"" for n in names)
    out = subprocess.run(
        ["/bin/sh", "-c", driver], cwd=tmp_path, env={"EMPTY": ""}, capture_output=True
    )
    assert out.returncode == 0, out.stderr
    sh = ShellEnv(HostRoot(str(tmp_path)), {"EMPTY": ""})
    sh.run_script(SUBSET, "s.sh")
    assert sh.warnings == []
    assert [sh.vars.get(n, "") for n in names] == out.stdout.decode().split("\0")[:-1]
