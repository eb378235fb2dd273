"""What a Parrot user types without thinking (issue 12, items 10-13): Parrot's options
and variables for parrot_run and parrot_cvmfs, a debug log apart from the job's output,
CVMFS_REPOSITORIES from the configuration files, --json on ls and info, the help's
environment variables and the man pages made from the parsers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from parrot_cvmfs.server.serve import StratumServer

from .conftest import PARROT_RUN, Cli, base_env, failed_with_one_line, published_env, repo_spec
from .servers import dead_url, serving

PARROT = PARROT_RUN
CLI = [sys.executable, "-m", "parrot_cvmfs"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env, timeout=300, **kw):
    return subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def server(published):
    with serving(StratumServer(published.stratum)) as srv:
        yield srv


def spec(published, url) -> str:
    return repo_spec(published.name, f"{url}/{published.name}", published.pubkey)


@pytest.fixture(scope="module")
def preloaded(published, server, tmp_path_factory):
    """The published repository preloaded into a directory (an alien cache)."""
    d = tmp_path_factory.mktemp("habits") / "preload"
    url = f"{server.url}/{published.name}"
    p = run([*CLI, "preload", "-u", url, "-r", str(d), "-k", published.pubkey], base_env())
    assert p.returncode == 0, p.stderr
    return str(d)


def offline_env(published, **extra) -> dict[str, str]:
    """A repository whose only server is dead: only the alien cache can answer."""
    return base_env(
        PARROT_CVMFS_REPO=repo_spec(published.name, dead_url(published.name), published.pubkey),
        **extra,
    )


# -- 10: Parrot's options and variables -----------------------------------------------------------


@pytest.mark.tracer
@pytest.mark.parametrize("form", ["-r", "--cvmfs-repos", "-r="])
def test_cvmfs_repos_option_replaces_parrot_cvmfs_repo(published, server, tmp_path, form):
    # the environment names the repository with a dead server: -r's entry is used instead
    env = offline_env(published)
    repos = spec(published, server.url)
    option = [f"-r{repos}"] if form == "-r=" else [form, repos]
    p = run(
        [
            *PARROT,
            "--cache-dir",
            str(tmp_path),
            *option,
            "--",
            "cat",
            f"/cvmfs/{published.name}/README",
        ],
        env,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"parrot-cvmfs test tree\n"
    # parrot_cvmfs takes it the same way
    q = Cli(env)("cat", published.name, "/README", *option, "--cache-dir", tmp_path / "c")
    assert q.returncode == 0, q.stderr
    assert q.stdout == b"parrot-cvmfs test tree\n"


@pytest.mark.tracer
def test_repo_switching_accepted(published, server, tmp_path):
    env = {**published_env(published, server.url), "PARROT_ALLOW_SWITCHING_CVMFS_REPOSITORIES": "1"}
    p = run(
        [*PARROT, "--cache-dir", str(tmp_path), "--cvmfs-repo-switching", "--"]
        + ["cat", f"/cvmfs/{published.name}/README"],
        env,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"parrot-cvmfs test tree\n"
    help_text = run([*PARROT, "--help"], env).stdout.decode()
    assert "--cvmfs-repo-switching" in help_text and "always" in help_text


@pytest.mark.tracer
@pytest.mark.parametrize("how", ["variable", "option", "offline-variable", "config"])
def test_offline_job_from_an_alien_cache_only(published, preloaded, tmp_path, how):
    """An empty cache, no server: the preloaded directory named by Parrot's variable,
    Parrot's option, or PARROT_CVMFS_CONFIG is enough."""
    extra, options = {}, ["--offline"]
    if how == "variable":
        extra["PARROT_CVMFS_ALIEN_CACHE"] = preloaded
    elif how == "option":
        options += ["--cvmfs-alien-cache", preloaded]
    elif how == "offline-variable":
        extra["PARROT_CVMFS_ALIEN_CACHE"] = preloaded
        extra["PARROT_CVMFS_OFFLINE"] = "yes"
        options = []
    else:
        extra["PARROT_CVMFS_CONFIG"] = f"alien_cachedir={preloaded},timeout=3"
    env = offline_env(published, **extra)
    cache = str(tmp_path / "empty-cache")
    p = run(
        [*PARROT, "--cache-dir", cache, *options, "--", "cat", f"/cvmfs/{published.name}/README"],
        env,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"parrot-cvmfs test tree\n"
    # and the client tools the same way
    q = Cli(env)("cat", published.name, "/README", "--cache-dir", cache + "2", *options)
    assert q.returncode == 0, q.stderr
    assert q.stdout == b"parrot-cvmfs test tree\n"


def test_alien_cache_variable_that_does_not_exist_is_named(published, tmp_path):
    env = offline_env(published, PARROT_CVMFS_ALIEN_CACHE=str(tmp_path / "typo"))
    p = Cli(env)("info", published.name, "--offline", "--cache-dir", tmp_path / "c")
    line = failed_with_one_line(p)
    assert "PARROT_CVMFS_ALIEN_CACHE" in line and "typo does not exist" in line, line


@pytest.mark.parametrize(
    "config, words",
    [
        ("nofiles=1024", ["nofiles", "ulimit -n"]),
        ("max_open_files=500", ["max_open_files", "ulimit -n"]),
        ("syslog_level=2", ["syslog_level", "syslog"]),
        ("quota_threshold=100", ["quota_threshold", "half of quota_limit"]),
        ("cache_directory=/tmp/x,bogus_option=1", ["unknown option 'bogus_option'"]),
        ("cache_directory", ["'cache_directory' has no value"]),
        ("alien_cache", ["alien_cache needs cache_directory"]),
        ("timeout=soon", ["CVMFS_TIMEOUT", "not a number"]),
    ],
)
def test_parrot_cvmfs_config_refusals(published, server, tmp_path, config, words):
    env = {**published_env(published, server.url), "PARROT_CVMFS_CONFIG": config}
    line = failed_with_one_line(Cli(env)("info", published.name, "--cache-dir", tmp_path))
    assert "Traceback" not in line
    for w in words:
        assert w in line, line


@pytest.mark.tracer
def test_parrot_cvmfs_config_cache_directory_and_log_file(published, server, tmp_path):
    """cache_directory is the cache (with no --cache-dir), log_file the debug log, and
    lock_directory/change_to_cache_directory (Parrot's own defaults) are accepted."""
    cache, log = tmp_path / "cache", tmp_path / "debug.log"
    config = (
        f"cache_directory={cache},log_file={log},change_to_cache_directory,"
        f"lock_directory={tmp_path},quota_limit=100,max_ttl=5"
    )
    env = {**published_env(published, server.url), "PARROT_CVMFS_CONFIG": config}
    p = run([*PARROT, "--", "cat", f"/cvmfs/{published.name}/README"], env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"parrot-cvmfs test tree\n" and p.stderr == b""
    assert (cache / "txn").is_dir()  # the cache's layout, made there
    assert "README" in log.read_text()


# -- 11: a debug log apart from the job's output ----------------------------------------------


@pytest.mark.tracer
def test_debug_file_keeps_the_log_apart(published, server, tmp_path):
    env = published_env(published, server.url)
    log = tmp_path / "debug.log"
    log.write_text("earlier line\n")
    mnt = f"/cvmfs/{published.name}"
    script = f"cat {mnt}/README; echo to-stderr >&2; ls -l /proc/self/fd/ | grep -c debug.log"
    cmd = [*PARROT, "--cache-dir", str(tmp_path / "c"), "--debug-file", str(log)]
    p = run([*cmd, "--", "/bin/sh", "-c", script], env)
    assert p.stdout == b"parrot-cvmfs test tree\n0\n", p.stdout  # the job never had it open
    assert p.stderr == b"to-stderr\n"  # no debug line there
    text = log.read_text()
    assert text.startswith("earlier line\n")  # appended to
    assert f"{mnt}/README" in text and "parrot-cvmfs test tree" not in text
    assert "to-stderr" not in text


@pytest.mark.tracer
@pytest.mark.parametrize("flag", [["-d", "all"], ["-dcvmfs"], ["--debug=syscall"]])
def test_parrot_debug_subsystems_are_debug(published, server, tmp_path, flag):
    env = published_env(published, server.url)
    cmd = [
        *PARROT,
        "--cache-dir",
        str(tmp_path),
        *flag,
        "--",
        "cat",
        f"/cvmfs/{published.name}/README",
    ]
    p = run(cmd, env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"parrot-cvmfs test tree\n"
    assert b"/README" in p.stderr  # the debug log, on stderr without --debug-file


def test_unknown_debug_subsystem_and_bad_debug_file(tmp_path):
    p = run([*PARROT, "-d", "everything", "--", "true"], base_env())
    assert p.returncode == 2 and b"everything" in p.stderr, p.stderr
    p = run([*PARROT, "--debug-file", str(tmp_path / "no" / "log"), "--", "true"], base_env())
    line = failed_with_one_line(p)
    assert "--debug-file" in line and "No such file or directory" in line, line
    # a configuration that cannot be read: one line, and under --debug its traceback
    env = base_env(PARROT_CVMFS_CONFIG="syslog_level=1")
    p = run([*PARROT, "--debug", "--", "true"], env)
    assert p.returncode == 1 and p.stderr.startswith(b"parrot_run: PARROT_CVMFS_CONFIG: ")
    assert b"Traceback" in p.stderr
    env = base_env(PARROT_CVMFS_CONFIG=f"log_file={tmp_path / 'no' / 'log'}")
    line = failed_with_one_line(run([*PARROT, "--", "true"], env))
    assert line.startswith("parrot_run: PARROT_CVMFS_CONFIG log_file "), line


# -- 12: CVMFS_REPOSITORIES from the configuration files -------------------------------------


@pytest.mark.tracer
def test_cvmfs_repositories_in_default_local_lists_them(published, server, tmp_path):
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "default.local").write_text("CVMFS_DEFAULT_DOMAIN=test.org\nCVMFS_REPOSITORIES=round\n")
    # a wildcard entry only: no name of its own to list
    domain = published.name.split(".", 1)[1]
    wildcard = repo_spec(f"*.{domain}", f"{server.url}/*.{domain}", published.pubkey)
    env = base_env(PARROT_CVMFS_REPO=wildcard)
    cmd = [*PARROT, "--cache-dir", str(tmp_path / "c"), "--config-dir", str(conf)]
    p = run([*cmd, "--", "ls", "/cvmfs"], env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().split() == [published.name]
    # and a short name gets the default domain from the same file
    p2 = Cli(env)("info", "round", "--config-dir", conf, "--cache-dir", tmp_path / "c2")
    assert p2.returncode == 0, p2.stderr
    assert f"fqrn: {published.name}" in p2.stdout.decode()


# -- 13: --json, --help, man pages ------------------------------------------------------------


def test_ls_and_info_json(published, server, tmp_path):
    cli = Cli(published_env(published, server.url))
    p = cli("ls", published.name, "/", "--json", "--cache-dir", tmp_path, check=True)
    records = [json.loads(line) for line in p.stdout.decode().splitlines()]
    by_name = {r["name"]: r for r in records}
    assert set(by_name) == set(os.listdir(published.src))
    find = {r["path"]: r for r in cli.find_json(published.name, "/", "--cache-dir", tmp_path)}
    readme = by_name["README"]
    assert {k: v for k, v in readme.items() if k != "name"} == find["/README"]
    p = cli("info", published.name, "--json", "--cache-dir", tmp_path, check=True)
    (info,) = [json.loads(line) for line in p.stdout.decode().splitlines()]
    text = cli("info", published.name, "--cache-dir", tmp_path, check=True).stdout.decode()
    assert [f"{k}: {v}" for k, v in info.items()] == text.splitlines()


def _variables_read() -> set[str]:
    """Every PARROT_* variable the package reads (string literals in its sources)."""
    names: set[str] = set()
    for d, _, files in os.walk(os.path.join(ROOT, "parrot_cvmfs")):
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(d, f)) as fh:
                    names |= set(re.findall(r"[\"'](PARROT_[A-Z_]+)[\"']", fh.read()))
    return names


def test_help_lists_every_variable_and_examples():
    read = _variables_read()
    assert {"PARROT_CVMFS_REPO", "PARROT_CVMFS_ALIEN_CACHE", "PARROT_CVMFS_CONFIG"} <= read
    run_help = run([*PARROT, "--help"], base_env()).stdout.decode()
    cli_help = run([*CLI, "--help"], base_env()).stdout.decode()
    for name in read:
        assert name in run_help, name
        if name != "PARROT_CVMFS_MODE":  # parrot_run's own
            assert name in cli_help, name
    for text in (run_help, cli_help):
        assert "examples:" in text
    assert "-o FILE" in run_help  # the difference from Parrot's -o


def test_man_pages_are_current():
    """The shipped man pages are what the parsers give today (`make man` rewrites them)."""
    from parrot_cvmfs.commands.manpage import pages

    for name, text in pages().items():
        with open(os.path.join(ROOT, "man", name), encoding="utf-8") as f:
            assert f.read() == text, f"man/{name} is stale: run `make man`"
        assert ".SH ENVIRONMENT" in text and "PARROT_CVMFS_ALIEN_CACHE" in text
    p = run(
        ["man", "-l", "--warnings", "-P", "cat", os.path.join(ROOT, "man", "parrot_run.1")],
        base_env(),
    )
    if p.returncode == 0:
        assert b"--cvmfs-repos" in p.stdout


# -- 15: a quiet build ------------------------------------------------------------------------


def _pip_noise(line: str) -> bool:
    """pip's own notes about this machine's index configuration, not the project's."""
    return "is ignored: it is neither a file nor a directory" in line


@pytest.mark.slow
def test_install_is_quiet_and_ships_the_man_pages(tmp_path):
    """pip install of the project into a fresh venv: not one warning from setuptools
    (license metadata, package discovery, deprecated calls), and the man pages land in
    share/man/man1."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", "*.so", ".pytest_cache"
        ),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    env = base_env()
    p = run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q"]
        + ["--no-deps", "--no-warn-script-location", str(src)],
        env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    lines = (p.stdout + p.stderr).decode().splitlines()
    noisy = [x for x in lines if re.search(r"warn|deprecat", x, re.I) and not _pip_noise(x)]
    assert noisy == [], "\n".join(noisy)
    for page in ("parrot_run.1", "parrot_cvmfs.1"):
        assert (venv / "share" / "man" / "man1" / page).is_file(), page


def test_shell_completion_of_parrot_cvmfs(tmp_path):
    """What bash's completion hook asks (argcomplete's protocol): the options of ls."""
    pytest.importorskip("argcomplete")
    out = tmp_path / "completions"
    line = "parrot_cvmfs ls --js"
    env = base_env(
        _ARGCOMPLETE="2",  # `python -m parrot_cvmfs`: the words start after "python"
        _ARGCOMPLETE_STDOUT_FILENAME=str(out),
        COMP_LINE=f"python {line}",
        COMP_POINT=str(len(line) + 7),
    )
    run([*CLI], env)
    assert out.read_text().split("\v") == ["--json "]


def test_derived_configuration_keeps_the_parrot_entries():
    """A configuration given more overrides (a preload, a mount with options) keeps the
    repositories of -r, not PARROT_CVMFS_REPO's again."""
    from parrot_cvmfs.client.config import Configuration

    given = "x.test.org:url=http://a.example/cvmfs/x.test.org"
    env = {"PARROT_CVMFS_REPO": "x.test.org:url=http://elsewhere/cvmfs/x.test.org"}
    config = Configuration(env=env, parrot_repos=given).with_overrides({"CVMFS_TIMEOUT": "3"})
    settings = config.settings("x.test.org")
    assert settings.get("CVMFS_SERVER_URL") == "http://a.example/cvmfs/x.test.org"
    assert settings.get("CVMFS_TIMEOUT") == "3"
