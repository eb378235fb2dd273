"""The cvmfs configuration files of a repository, in the real client's order, sourced by
/bin/sh as the real client does, and the shell's answer kept per user (memo) so that
a warm start runs no shell."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import ConfigError, CvmfsError

# What the configuration looked at, for the start plan (tracer/startplan.py): path ->
# (dev, ino, size, mtime_ns, kind), kind 0 absent, 1 a file, 2 a directory (listed);
# None while nobody records. `opaque`: an answer depended on more than these files.
_seen: dict[str, tuple[int, int, int, int, int]] | None = None
_opaque = False
_words: set[str] = set()  # every word of the files sourced (the variables they may name)
_since_ns = 0  # when recording began: no identity noted after it is older than this


def record_reads() -> None:
    """From now on, note every configuration file read or probed and directory listed."""
    global _seen, _opaque, _since_ns
    import time

    _seen, _opaque, _since_ns = {}, False, time.time_ns()
    _words.clear()


def since_ns() -> int:
    """When record_reads() began (time.time_ns()); 0 if it never did."""
    return _since_ns


def named() -> set[str]:
    """The words of the configuration files sourced since record_reads(): a superset of
    the environment variables their answer depends on."""
    return _words


def reads() -> dict[str, tuple[int, int, int, int, int]] | None:
    """What was noted since record_reads(); None if an answer depended on more (files
    that run commands or read other files), or if nothing was recorded."""
    return None if _opaque else _seen


def identity(path: str) -> tuple[int, int, int, int, int]:
    """(dev, ino, size, mtime_ns, kind) of `path` as a start plan records it."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0, 0, 0)
    kind = 2 if stat.S_ISDIR(st.st_mode) else 1
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, kind)


def _note(path: str) -> None:
    """Note `path`'s identity (before it is read: a change after it shows next time)."""
    if _seen is not None and path not in _seen:
        _seen[path] = identity(path)


def assigned_names(text: str) -> list[str]:
    """Parameters assigned in a config file, by the client's line rules."""
    import re

    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" not in line:
            continue
        name = line.split("=", 1)[0]
        for prefix in ("readonly ", "export ", "eval "):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        name = name.strip()
        if (
            name
            and " " not in name
            and "\t" not in name
            and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name)
        ):
            names.append(name)
    return names


def assigns(files: list[str], name: str) -> bool:
    """Whether one of the (existing, readable) `files` assigns parameter `name`."""
    for path in files:
        _note(path)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read(1 << 20)
        except OSError:
            continue
        if name in text and name in assigned_names(text):
            return True
    return False


def default_config_files(sysdir: str, config_repo_etc: str | None) -> list[str]:
    """The files the client sources for every repository, in order (missing ones
    included): what `cvmfs_config` reads CVMFS_REPOSITORIES from."""
    files = [os.path.join(sysdir, "default.conf")]
    _note(os.path.join(sysdir, "default.d"))
    try:
        dropins = os.listdir(os.path.join(sysdir, "default.d"))
    except OSError:
        dropins = []
    files += sorted(
        os.path.join(sysdir, "default.d", n)
        for n in dropins
        if n.endswith(".conf") and not n.startswith(".")
    )
    if config_repo_etc:
        files.append(os.path.join(config_repo_etc, "default.conf"))
    files.append(os.path.join(sysdir, "default.local"))
    return files


def config_files(fqrn: str, sysdir: str, config_repo_etc: str | None) -> list[str]:
    """The files the client sources for `fqrn`, in order (missing ones included)."""
    domain = fqrn.split(".", 1)[1] if "." in fqrn else ""
    files = default_config_files(sysdir, config_repo_etc)
    if domain:
        if config_repo_etc:
            files.append(os.path.join(config_repo_etc, "domain.d", f"{domain}.conf"))
        files.append(os.path.join(sysdir, "domain.d", f"{domain}.conf"))
        files.append(os.path.join(sysdir, "domain.d", f"{domain}.local"))
    if config_repo_etc:
        files.append(os.path.join(config_repo_etc, "config.d", f"{fqrn}.conf"))
    files.append(os.path.join(sysdir, "config.d", f"{fqrn}.conf"))
    files.append(os.path.join(sysdir, "config.d", f"{fqrn}.local"))
    return files


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


# Identifier characters; everything else becomes a word separator.
_WORDS = str.maketrans({chr(c): " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")})
# Shell words that read something other than the environment and the files' own text.
_READERS = {"source", "read", "eval", "exec", "mapfile", "readarray"}


def _memo_key(
    fqrn: str, texts: list[tuple[str, str]], seed: Mapping[str, str], sh_env: Mapping[str, str]
) -> str | None:
    """A digest of everything the shell's answer depends on, or None when the files may
    run commands or read other files (their answer could change with nothing here
    changing). The environment counts by the variables the files name."""
    words: set[str] = set()
    for _, text in texts:
        lines = [line.split(" #", 1)[0].strip() for line in text.splitlines()]
        code = "\n".join(line for line in lines if not line.startswith("#"))
        if "`" in code or "<" in code or "$(" in code.replace("$((", ""):
            return None
        if any(line.startswith(". ") for line in lines) or " . " in code or "\t. " in code:
            return None
        found = set(code.translate(_WORDS).split())
        if found & _READERS:
            return None
        words |= found
    from ..format.hashes import md5_digest

    parts = [fqrn, "\0".join(f"{k}={v}" for k, v in seed.items())]
    parts += [f"{path}\0{text}" for path, text in texts]
    parts += [f"{w}={sh_env[w]}" for w in sorted(words) if w in sh_env]
    blob = "\0\1".join(parts).encode("utf-8", "surrogateescape")
    return md5_digest(blob).hex()


def _memo_name(key: str) -> str:
    return f"{key}.{os.getuid()}"


def _memo_read(memo_dir: str, key: str) -> bytes | None:
    """The stored answer, if this user wrote it (a shared cache's other users cannot
    hand us parameters) and nobody else can change it. Nothing is followed as a link,
    the directory included."""
    from .cache import open_in_dir

    try:
        fd = open_in_dir(memo_dir, _memo_name(key))
    except OSError:
        return None
    try:
        s = os.fstat(fd)
        if s.st_uid != os.getuid() or s.st_mode & 0o022:
            return None
        return os.read(fd, max(s.st_size, 1) + 1)
    finally:
        os.close(fd)


def _memo_write(memo_dir: str, key: str, data: bytes) -> None:
    from ..atomic import write_atomic_at  # a miss: off the start-up path
    from .cache import open_subdir

    try:
        dfd = open_subdir(memo_dir)
        try:
            write_atomic_at(dfd, _memo_name(key), data, 0o644)
        finally:
            os.close(dfd)
    except (OSError, CvmfsError):
        pass  # not kept: evaluated again next time


def _parse_shell_output(out: bytes) -> tuple[dict[str, str], int]:
    """(parameters, number of files completely evaluated) from the script's output."""
    params: dict[str, str] = {}
    done = 0
    for item in out.split(b"\0"):
        if not item:
            continue
        text = item.decode("utf-8", "surrogateescape")
        if text.startswith("@@FILE "):
            from ..format.values import decimal

            index = decimal(text[7:], 1 << 20)
            if index is None:
                return {}, 0  # not what our script prints (a damaged memo): evaluate again
            done = index + 1
            continue
        k, _, v = text.partition("=")
        params[k] = v
    return params, done


def evaluate_config_files(
    fqrn: str,
    files: list[str],
    seed: Mapping[str, str],
    env: Mapping[str, str],
    memo_dir: str | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Source the existing files in one /bin/sh, each from its own directory, and
    record the value of every parameter the file assigns. Returns (params, files read).

    With `memo_dir`, the shell's answer is kept there under a digest of the files'
    text, the seed and the environment variables they name, and reused while those
    stay the same (a shell costs ~10 ms of every parrot_run start)."""
    for f in files:
        _note(f)
    existing = [f for f in files if os.path.isfile(f)]
    if not existing:
        return {}, []
    texts = []
    for path in existing:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                texts.append((path, f.read()))
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
    if _seen is not None:
        for _, text in texts:
            _words.update(text.translate(_WORDS).split())
    sh_env = {k: v for k, v in env.items() if not k.startswith("CVMFS_")}
    sh_env.setdefault("PATH", "/usr/bin:/bin")
    key = _memo_key(fqrn, texts, seed, sh_env) if memo_dir else None
    if key is None:
        global _opaque
        _opaque = True  # the answer may change with none of the files changing
    if key is not None:
        stored = _memo_read(memo_dir, key)
        if stored is not None:
            params, done = _parse_shell_output(stored)
            if done == len(existing):
                return params, existing
    script = ["set +e"]
    for k, v in seed.items():
        script.append(f"{k}={_sh_quote(v)}")
    script.append(f"CVMFS_FQRN={_sh_quote(fqrn)}")
    for i, (path, text) in enumerate(texts):
        script.append(f"cd {_sh_quote(os.path.dirname(path) or '/')} && . {_sh_quote(path)}")
        script.append(f"printf '@@FILE %s\\000' {i}")
        for n in assigned_names(text):
            script.append(f"printf '%s=%s\\000' {n} \"${{{n}}}\"")
    import subprocess

    try:
        out = subprocess.run(
            ["/bin/sh", "-s"],
            input="\n".join(script).encode("utf-8", "surrogateescape"),
            capture_output=True,
            env=sh_env,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"cannot evaluate cvmfs configuration files with /bin/sh: {e}") from None
    params, done = _parse_shell_output(out.stdout)
    if done < len(existing):
        bad = existing[done]
        msg = out.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f": {msg[-1]}" if msg else ""
        raise ConfigError(f"configuration file {bad} failed to evaluate{detail}")
    if key is not None:
        _memo_write(memo_dir, key, out.stdout)
    return params, existing
