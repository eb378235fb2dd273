"""A guest root as `apptainer exec` and `apptainer run` see it: the job's environment
and the program `--run` starts.

The environment is built in apptainer's order: host side, variables named
`APPTAINER_*`/`SINGULARITY_*` and `LD_LIBRARY_PATH` are dropped, `PATH` becomes
apptainer's default, `APPTAINERENV_X`/`SINGULARITYENV_X` and `--env X=V` set X
(`PATH`, `PREPEND_PATH`, `APPEND_PATH` act on PATH; `HOME` cannot be set). When the
root holds `/.singularity.d/env/*.sh` (or a legacy `/environment`), those scripts are
evaluated in name order on an emptied environment, the overrides exported after
`99-base.sh` (or after the last script when there is none); host variables the scripts
did not define come back, ones they left empty go. So the image's values beat the
host's, and the user's `--env` beats both. A root without scripts (a bare OS tree such
as cvm4) gets the host environment with the default PATH and the overrides.

Why not run the scripts in a shell: the tracer has not started when the environment
is needed, so the guest's /bin/sh cannot run them, and the host's /bin/sh would see the
host's files where the scripts test the guest's (`[ -d /opt/x ]`), run host programs
for `$(...)`, and could not read a root in /cvmfs at all. Apptainer itself evaluates
them with an embedded interpreter, not the image's shell. So `ShellEnv` evaluates the
part of sh that environment scripts use: assignments, `export`, `unset`, `readonly`,
quoting, `$X`/`${X}`/`${X:-w}`/`${X-w}`/`${X:=w}`/`${X:+w}`/`${X+w}`/`${#X}`, `if`/
`elif`/`else`/`fi`, `&&`/`||`, `!`, `test`/`[` (strings, numbers, -e -f -d -x -s -L
in the guest). A statement using anything else (command substitution, pipes,
functions, other commands) is skipped with a warning naming the script and line.

The root is read through a reader with `stat(path)` (links followed in the guest;
None when absent) and `read(path, limit)` (bytes), e.g. `HostRoot` for a host
directory; the tracer gives one reading /cvmfs.
"""

from __future__ import annotations

import os
import stat as st

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV_DIR = "/.singularity.d/env"
LEGACY_ENV = "/environment"
RUNSCRIPTS = ("/.singularity.d/runscript", "/apptainer", "/bin/sh")  # apptainer run's order
LIBS = "/.singularity.d/libs"
SCRIPT_MAX = 64 << 10  # bytes of one environment script (DUCC's and apptainer's: < 4 KiB)
SCRIPTS_MAX = 256  # scripts in the env directory
_STEPS_MAX = 100_000  # statements evaluated over all scripts (a bound on input loops)
_PREFIXES = ("APPTAINERENV_", "SINGULARITYENV_")
_NEVER_SET = frozenset({"HOME", "APPTAINER_SHELL", "SINGULARITY_SHELL"})
_KEPT_IN_SCRIPTS = ("PWD", "HOME", "OPTIND", "UID", "GID")  # what clear_env spares


class ImageError(Exception):
    """The root cannot be run as asked (e.g. `--run` with nothing to run)."""


class _Unsupported(Exception):
    """A construct outside what ShellEnv evaluates."""


# -- reading the root -----------------------------------------------------------------------------


class HostRoot:
    """A guest root that is a host directory: guest paths resolved inside it, absolute
    link targets taken from the root, at most 40 links per path (ELOOP's bound)."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)

    def _host(self, path: str) -> str | None:
        done: list[str] = []
        todo = [p for p in path.split("/") if p][::-1]
        links = 0
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                if done:
                    done.pop()
                continue
            host = os.path.join(self.root, *done, name)
            try:
                s = os.lstat(host)
            except OSError:
                return None
            if st.S_ISLNK(s.st_mode):
                links += 1
                if links > 40:
                    return None
                target = os.readlink(host)
                if target.startswith("/"):
                    done = []
                todo.extend([p for p in target.split("/") if p][::-1])
                continue
            done.append(name)
        return os.path.join(self.root, *done)

    def stat(self, path: str):
        """The attributes of the guest's `path` (links followed), or None."""
        host = self._host(path)
        try:
            return os.lstat(host) if host else None
        except OSError:
            return None

    def read(self, path: str, limit: int) -> bytes:
        """At most `limit` bytes of the guest's regular file `path` (OSError if none)."""
        host = self._host(path)
        if host is None:
            raise FileNotFoundError(path)
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not st.S_ISREG(os.fstat(fd).st_mode):
                raise IsADirectoryError(path)
            return os.read(fd, limit)
        finally:
            os.close(fd)

    def entries(self, path: str) -> list[str]:
        """The names in the guest's directory `path` ([] if it is none)."""
        host = self._host(path)
        try:
            return os.listdir(host) if host else []
        except OSError:
            return []


# -- the shell subset ---------------------------------------------------------------------------

_OPS = ("&&", "||", ";;", ";", "\n", "|", "&", "(", ")", "<", ">")
_KEYWORDS = frozenset({"then", "elif", "else", "fi", "do", "done", "esac", "}"})


def _is_name(s: str) -> bool:
    return bool(s) and (s[0].isalpha() or s[0] == "_") and all(c.isalnum() or c == "_" for c in s)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) of a script: kind "w" a raw word (quotes kept), "op" an
    operator; comments dropped, backslash-newline joined."""
    out: list[tuple[str, str, int]] = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
        elif c == "\\" and text.startswith("\\\n", i):
            i, line = i + 2, line + 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "&|;\n()<>":
            op = next(op for op in _OPS if text.startswith(op, i))
            out.append(("op", op, line))
            line += op == "\n"
            i += len(op)
        else:
            start, start_line = i, line
            i, line = _word_end(text, i, line)
            out.append(("w", text[start:i], start_line))
    return out


def _word_end(text: str, i: int, line: int) -> tuple[int, int]:
    """Where the raw word starting at `i` ends (quotes and ${...} kept whole)."""
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t\n;&|()<>":
            return i, line
        if c == "\\":
            i += 2
            continue
        if c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise _Unsupported("unterminated quote")
            line += text.count("\n", i, j)
            i = j + 1
            continue
        if c == '"' or text.startswith("${", i) or text.startswith("$(", i) or c == "`":
            j = _closing(text, i)
            line += text.count("\n", i, j)
            i = j
            continue
        i += 1
    return i, line


def _closing(text: str, i: int) -> int:
    """The index after the "...", ${...}, $(...) or `...` starting at `i`."""
    if text[i] == '"':
        j = i + 1
        while j < len(text):
            c = text[j]
            if c == "\\":
                j += 2
            elif c == '"':
                return j + 1
            elif text.startswith("${", j) or text.startswith("$(", j) or c == "`":
                j = _closing(text, j)
            else:
                j += 1
        raise _Unsupported("unterminated quote")
    if text[i] == "`":
        j = text.find("`", i + 1)
        if j < 0:
            raise _Unsupported("unterminated `")
        return j + 1
    close = "}" if text[i + 1] == "{" else ")"
    depth, j = 0, i + 2
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"' or text.startswith("${", j) or text.startswith("$(", j):
            j = _closing(text, j)
            continue
        if c == ("{" if close == "}" else "("):
            depth += 1
        elif c == close:
            if depth == 0:
                return j + 1
            depth -= 1
        j += 1
    raise _Unsupported(f"unterminated ${text[i + 1]}")


class ShellEnv:
    """Variables (exported or not) and the evaluation of environment scripts."""

    def __init__(self, root, variables: dict[str, str] | None = None):
        self.root = root
        self.vars: dict[str, str] = dict(variables or {})
        self.exported: set[str] = set(self.vars)
        self.warnings: list[str] = []
        self.steps = 0

    # words

    def expand(self, raw: str) -> tuple[str, bool]:
        """A raw word's value, and whether any of it was quoted."""
        out: list[str] = []
        quoted = False
        i, n = 0, len(raw)
        while i < n:
            c = raw[i]
            if c == "'":
                j = raw.index("'", i + 1)
                out.append(raw[i + 1 : j])
                quoted, i = True, j + 1
            elif c == '"':
                j = _closing(raw, i)
                out.append(self._double(raw[i + 1 : j - 1]))
                quoted, i = True, j
            elif c == "\\":
                out.append(raw[i + 1 : i + 2])
                quoted, i = True, i + 2
            elif c == "$":
                v, i = self._dollar(raw, i)
                out.append(v)
            elif c == "`":
                raise _Unsupported("command substitution")
            else:
                out.append(c)
                i += 1
        return "".join(out), quoted

    def _double(self, s: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(s):
            c = s[i]
            if c == "\\" and i + 1 < len(s) and s[i + 1] in '$`"\\\n':
                out.append(s[i + 1] if s[i + 1] != "\n" else "")
                i += 2
            elif c == "$":
                v, i = self._dollar(s, i)
                out.append(v)
            elif c == "`":
                raise _Unsupported("command substitution")
            else:
                out.append(c)
                i += 1
        return "".join(out)

    def _dollar(self, s: str, i: int) -> tuple[str, int]:
        if s.startswith("$(", i):
            raise _Unsupported("command substitution")
        if s.startswith("${", i):
            j = _closing(s, i)
            return self._braced(s[i + 2 : j - 1]), j
        j = i + 1
        while j < len(s) and (s[j].isalnum() or s[j] == "_"):
            j += 1
        name = s[i + 1 : j]
        if not name:
            if j < len(s) and s[j] in "?$!#@*-0123456789":
                raise _Unsupported(f"${s[j]}")
            return "$", j
        if name[0].isdigit():
            raise _Unsupported("positional parameters")
        return self.vars.get(name, ""), j

    def _braced(self, body: str) -> str:
        if body.startswith("#") and _is_name(body[1:]):
            return str(len(self.vars.get(body[1:], "")))
        j = 0
        while j < len(body) and (body[j].isalnum() or body[j] == "_"):
            j += 1
        name, rest = body[:j], body[j:]
        if not _is_name(name):
            raise _Unsupported("${" + body + "}")
        value = self.vars.get(name)
        if not rest:
            return value or ""
        colon = rest.startswith(":")
        op = rest[1:2] if colon else rest[:1]
        word = rest[2:] if colon else rest[1:]
        unset = value is None or (colon and value == "")
        if op == "-":
            return self.expand(word)[0] if unset else value
        if op == "=":
            if unset:
                self.vars[name] = self.expand(word)[0]
            return self.vars[name]
        if op == "+":
            return "" if unset else self.expand(word)[0]
        raise _Unsupported("${" + body + "}")

    # statements

    def run_script(self, text: str, where: str) -> None:
        """Evaluate one script; `where` names it in warnings."""
        try:
            tokens = _tokens(text)
        except _Unsupported as e:
            self.warnings.append(f"{where}: {e}: script skipped")
            return
        self._list(tokens, 0, where, frozenset(), run=True)

    def _list(self, toks, pos, where, stops, run) -> int:
        """Statements up to a keyword in `stops` (or the end); returns its position."""
        self.status = 0
        while pos < len(toks):
            kind, text, line = toks[pos]
            if kind == "op" and text in (";", "\n"):
                pos += 1
                continue
            if kind == "w" and text in stops:
                return pos
            if kind == "w" and text in _KEYWORDS:
                raise _ScriptError(f"{where}:{line}: unexpected '{text}'")
            pos = self._and_or(toks, pos, where, run)
        return pos

    def _and_or(self, toks, pos, where, run) -> int:
        pos, status = self._pipeline(toks, pos, where, run)
        while pos < len(toks) and toks[pos][:2] in (("op", "&&"), ("op", "||")):
            op = toks[pos][1]
            pos += 1
            while pos < len(toks) and toks[pos][:2] == ("op", "\n"):
                pos += 1
            go = run and ((status == 0) if op == "&&" else (status != 0))
            pos, new = self._pipeline(toks, pos, where, go)
            if go:
                status = new
        self.status = status
        return pos

    def _pipeline(self, toks, pos, where, run) -> tuple[int, int]:
        negate = pos < len(toks) and toks[pos][:2] == ("w", "!")
        if negate:
            pos += 1
        if pos < len(toks) and toks[pos][:2] == ("w", "if"):
            pos, status = self._if(toks, pos + 1, where, run)
        else:
            pos, status = self._simple(toks, pos, where, run)
        return pos, (0 if status else 1) if negate else status

    def _if(self, toks, pos, where, run) -> tuple[int, int]:
        taken, status = False, 0
        while True:
            pos = self._list(toks, pos, where, frozenset({"then"}), run and not taken)
            cond = self.status
            pos = self._expect(toks, pos, "then", where)
            branch = run and not taken and cond == 0
            pos = self._list(toks, pos, where, frozenset({"elif", "else", "fi"}), branch)
            if branch:
                taken, status = True, self.status
            word = toks[pos][1] if pos < len(toks) else "fi"
            if word == "elif":
                pos += 1
                continue
            if word == "else":
                pos = self._list(toks, pos + 1, where, frozenset({"fi"}), run and not taken)
                if run and not taken:
                    status = self.status
            return self._expect(toks, pos, "fi", where), status

    def _expect(self, toks, pos, word, where) -> int:
        if pos < len(toks) and toks[pos][:2] == ("w", word):
            return pos + 1
        line = toks[pos][2] if pos < len(toks) else toks[-1][2] if toks else 1
        raise _ScriptError(f"{where}:{line}: '{word}' expected")

    def _simple(self, toks, pos, where, run) -> tuple[int, int]:
        words: list[str] = []
        line = toks[pos][2] if pos < len(toks) else 0
        bad = None
        while pos < len(toks):
            kind, text, _ = toks[pos]
            if kind == "op":
                if text in (";", "\n", "&&", "||"):
                    break
                bad = bad or f"'{text}'"
            elif text in _KEYWORDS and not words:
                break
            else:
                words.append(text)
            pos += 1
        if not run:
            return pos, 0
        self.steps += 1
        if self.steps > _STEPS_MAX:
            raise _ScriptError(f"{where}: more than {_STEPS_MAX} statements")
        if bad:
            self.warnings.append(f"{where}:{line}: {bad} is not evaluated: statement skipped")
            return pos, 1
        try:
            return pos, self._command(words)
        except (_Unsupported, ValueError) as e:
            self.warnings.append(f"{where}:{line}: {e} is not evaluated: statement skipped")
            return pos, 1

    def _command(self, words: list[str]) -> int:
        assigns = []
        while words and "=" in words[0] and _is_name(words[0].split("=", 1)[0]):
            name, raw = words.pop(0).split("=", 1)
            assigns.append((name, raw))
        if not words:
            for name, raw in assigns:
                self.vars[name] = self.expand(raw)[0]
            return 0
        cmd = self.expand(words[0])[0]
        if assigns and cmd not in ("export", "readonly", ":", "true"):
            raise _Unsupported(f"command {cmd!r}")
        if cmd in (":", "true"):
            for raw in words[1:]:
                self.expand(raw)  # for ${X:=w}
            return 0
        if cmd == "false":
            return 1
        if cmd in ("echo", "printf"):  # the job's output is not the place for these
            return 0
        if cmd in ("export", "readonly"):
            for raw in words[1:]:
                if raw.startswith("-"):
                    continue
                name, eq, value = raw.partition("=")
                if not _is_name(name):
                    raise _Unsupported(f"{cmd} {raw}")
                if eq:
                    self.vars[name] = self.expand(value)[0]
                if cmd == "export":
                    self.exported.add(name)
            return 0
        if cmd == "unset":
            for raw in words[1:]:
                name = self.expand(raw)[0]
                if name in ("-v", "-f"):
                    continue
                self.vars.pop(name, None)
                self.exported.discard(name)
            return 0
        if cmd in ("test", "["):
            args = []
            for raw in words[1:]:
                value, quoted = self.expand(raw)
                if value or quoted:  # an unquoted empty expansion is no argument
                    args.append(value)
            if cmd == "[":
                if not args or args[-1] != "]":
                    raise _Unsupported("[ without ]")
                args.pop()
            return 0 if self._test(args) else 1
        raise _Unsupported(f"command {cmd!r}")

    def _test(self, a: list[str]) -> bool:
        if not a:
            return False
        if a[0] == "!":
            return not self._test(a[1:])
        if len(a) == 1:
            return a[0] != ""
        if len(a) == 2:
            op, x = a
            if op == "-z":
                return x == ""
            if op == "-n":
                return x != ""
            return self._file_test(op, x)
        if len(a) == 3:
            x, op, y = a
            if op in ("=", "=="):
                return x == y
            if op == "!=":
                return x != y
            ints = {"-eq": "__eq__", "-ne": "__ne__", "-lt": "__lt__", "-le": "__le__",
                    "-gt": "__gt__", "-ge": "__ge__"}  # fmt: skip
            if op in ints:
                try:
                    return getattr(int(x), ints[op])(int(y))
                except ValueError:
                    return False
        if "-a" in a or "-o" in a:
            raise _Unsupported("test -a/-o")
        raise _Unsupported(f"test {' '.join(a)}")

    def _file_test(self, op: str, path: str) -> bool:
        if op not in ("-e", "-f", "-d", "-x", "-s", "-r", "-L", "-h"):
            raise _Unsupported(f"test {op}")
        if op in ("-L", "-h"):
            raise _Unsupported(f"test {op}")
        s = self.root.stat(path) if path.startswith("/") else None
        if s is None:
            return False
        if op == "-f":
            return st.S_ISREG(s.st_mode)
        if op == "-d":
            return st.S_ISDIR(s.st_mode)
        if op == "-x":
            return bool(s.st_mode & 0o111)
        if op == "-s":
            return s.st_size > 0
        return True


class _ScriptError(Exception):
    """A script whose structure is broken (if without fi): the rest of it is skipped."""


# -- the environment -----------------------------------------------------------------------------


def env_scripts(root) -> list[str]:
    """The image's environment scripts in the order apptainer sources them, or
    [LEGACY_ENV] for an image older than Singularity 2.3, or [] (no image)."""
    s = root.stat(ENV_DIR)
    if s is not None and st.S_ISDIR(s.st_mode):
        names = sorted(n for n in root.entries(ENV_DIR) if n.endswith(".sh"))[:SCRIPTS_MAX]
        out = []
        for n in names:
            f = root.stat(f"{ENV_DIR}/{n}")
            if f is not None and st.S_ISREG(f.st_mode):
                out.append(f"{ENV_DIR}/{n}")
        return out
    s = root.stat(LEGACY_ENV)
    return [LEGACY_ENV] if s is not None and st.S_ISREG(s.st_mode) else []


def is_image(root) -> bool:
    """Whether the root carries apptainer's environment (so is built as an image)."""
    s = root.stat(ENV_DIR)
    return (s is not None and st.S_ISDIR(s.st_mode)) or bool(env_scripts(root))


def _overrides(host: dict[str, str], env_args: Iterable[tuple[str, str]]):
    """The variables the user sets: APPTAINERENV_ over SINGULARITYENV_, then --env."""
    out: dict[str, str] = {}
    for prefix in reversed(_PREFIXES):  # SINGULARITYENV_ first, APPTAINERENV_ wins
        for k, v in host.items():
            if k.startswith(prefix) and len(k) > len(prefix):
                out[k[len(prefix) :]] = v
    out.update(env_args)
    for k in _NEVER_SET:
        out.pop(k, None)
    return out


def _with_user_path(path: str, over: dict[str, str]) -> str:
    """99-runtimevars: PREPEND_PATH, APPEND_PATH, then PATH replacing it all."""
    if "PREPEND_PATH" in over:
        path = f"{over['PREPEND_PATH']}:{path}"
    if "APPEND_PATH" in over:
        path = f"{path}:{over['APPEND_PATH']}"
    return over.get("PATH", path)


def _fixpath(path: str | None) -> str:
    """PATH with apptainer's default entries it lacks appended."""
    have = (path or "").split(":") if path else []
    return ":".join(have + [p for p in DEFAULT_PATH.split(":") if p not in have])


def job_environment(
    root,
    host: dict[str, str],
    env_args: Iterable[tuple[str, str]] = (),
    warn: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """The environment of a job in `root`, from the host's `host` and the user's
    `--env` pairs (see the module docstring); `warn` gets one line per statement of
    the image's scripts that was not evaluated."""
    over = _overrides(host, env_args)
    special = {"PATH", "PREPEND_PATH", "APPEND_PATH"}
    passed = {
        k: v
        for k, v in host.items()
        if not k.startswith(("APPTAINER_", "SINGULARITY_", *_PREFIXES)) and k != "LD_LIBRARY_PATH"
    }
    passed["PATH"] = DEFAULT_PATH
    scripts = env_scripts(root)
    if not scripts:
        env = dict(passed)
        env.update((k, v) for k, v in over.items() if k not in special)
        env["PATH"] = _with_user_path(DEFAULT_PATH, over)
        return env
    sh = ShellEnv(root, {k: passed[k] for k in _KEPT_IN_SCRIPTS if k in passed})

    def inject() -> None:  # /.inject-apptainer-env.sh: the user's values, evaluated
        for k, v in over.items():
            if k not in special:
                try:
                    sh.vars[k] = sh._double(v)
                except _Unsupported:
                    sh.vars[k] = v
                sh.exported.add(k)
        lib = sh.vars.get("LD_LIBRARY_PATH")
        if not lib:
            sh.vars["LD_LIBRARY_PATH"] = LIBS
        elif LIBS not in lib.split(":"):  # 99-base.sh adds it too
            sh.vars["LD_LIBRARY_PATH"] = f"{lib}:{LIBS}"
        sh.exported.add("LD_LIBRARY_PATH")

    injected = False
    for path in scripts:
        name = os.path.basename(path)
        if name == "90-environment.sh" and "PATH" not in sh.vars:
            sh.vars["PATH"] = _fixpath(None)
            sh.exported.add("PATH")
        try:
            data = root.read(path, SCRIPT_MAX + 1)
        except OSError as e:
            sh.warnings.append(f"{path}: cannot be read ({e.strerror}): skipped")
            continue
        if len(data) > SCRIPT_MAX:
            sh.warnings.append(f"{path}: larger than {SCRIPT_MAX >> 10} KiB: skipped")
            continue
        text = data.decode("utf-8", "surrogateescape")
        try:
            sh.run_script(text, path)
        except _ScriptError as e:
            sh.warnings.append(f"{e}: rest of the script skipped")
        if name in ("10-docker2singularity.sh", "10-docker.sh") or path == LEGACY_ENV:
            sh.vars["PATH"] = _fixpath(sh.vars.get("PATH"))
            sh.exported.add("PATH")
        if name == "99-base.sh" or path == LEGACY_ENV:
            inject()
            injected = True
        if sh.steps > _STEPS_MAX:
            break
    if not injected:
        inject()
    env = {k: sh.vars[k] for k in sh.exported if k in sh.vars}
    env["PATH"] = _with_user_path(env.get("PATH", DEFAULT_PATH), over)
    for k, v in passed.items():  # restore_env: host values fill the gaps; empty ones go
        if k not in env and k not in sh.vars:
            env[k] = v
    env = {k: v for k, v in env.items() if v != "" or k not in passed}
    if warn is not None:
        for w in sh.warnings:
            warn(w)
    return env


def run_command(root, args: list[str]) -> list[str]:
    """The argv `apptainer run` executes in `root` with `args`: the first executable of
    /.singularity.d/runscript, /apptainer, /bin/sh."""
    for path in RUNSCRIPTS:
        s = root.stat(path)
        if s is not None and st.S_ISREG(s.st_mode) and s.st_mode & 0o111:
            return [path, *args]
    raise ImageError("no runscript and no /bin/sh executable in the root")
