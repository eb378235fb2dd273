"""`CVMFS_HTTP_PROXY=auto`: the site's proxies from its PAC files, as the real client
finds them (`wpad.cc`: AutoProxy, ParsePac, PacProxy2Cvmfs).

The PAC URLs of CVMFS_PAC_URLS are tried in order (`auto` among them stands for
http://wpad/wpad.dat), each fetched DIRECT with a deadline and a size bound. A PAC
file is JavaScript: it is evaluated by pacparser (the library the real client links),
in a child process, so that a script that loops forever is killed at a deadline,
pacparser's messages do not land on the job's stderr, and its one global JavaScript
context is nobody else's. `FindProxyForURL` is asked for every stratum 1 (the URL of
its manifest and its host name); the first one's answer counts. `PROXY a; PROXY b;
DIRECT` becomes the groups `a;b;DIRECT`, in that fail-over order (SOCKS and anything
else are skipped; an empty answer is DIRECT). The first PAC file that gives a proxy
wins; with `http_proxy` in the environment, that is used without any PAC file.
"""

from __future__ import annotations

import os
import sys

from ..errors import CvmfsError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    # one bounded GET of an absolute URL (DIRECT), at most `limit` bytes
    Fetch = Callable[[str, int], bytes]

WPAD_URL = "http://wpad/wpad.dat"
MAX_PAC = 1 << 20  # bytes of a PAC file
MAX_ANSWER = 1 << 16  # bytes of one FindProxyForURL answer
MAX_QUERIES = 16  # stratum 1s a PAC file is asked about
MIN_EVAL_SECONDS = 2.0  # the least time pacparser gets to load the script and answer

# The child: the script on stdin, (url, host) pairs as arguments, one answer a line;
# exit 3: the script does not load, 4: FindProxyForURL failed, 5: no pacparser.
_EVALUATOR = """
import sys
try:
    import pacparser
except ImportError:
    sys.exit(5)
script = sys.stdin.buffer.read().decode("utf-8", "replace")
pacparser.init()
try:
    pacparser.parse_pac_string(script)
except Exception:
    sys.exit(3)
args = sys.argv[1:]
for url, host in zip(args[::2], args[1::2]):
    try:
        answer = pacparser.find_proxy(url, host)
    except Exception:
        sys.exit(4)
    print(" ".join((answer or "").split())[:MAX_ANSWER], flush=True)
""".replace("MAX_ANSWER", str(MAX_ANSWER))

_EXIT_REASONS = {
    3: "the script does not load",
    4: "FindProxyForURL gave no answer",
    5: "pacparser is not installed (pip install pacparser)",
}


class PacError(CvmfsError):
    """A PAC file that gives no proxy (not fetched, not JavaScript, no answer)."""


def pac_urls(spec: str | None) -> list[str]:
    """The `;` list of CVMFS_PAC_URLS, `auto` standing for the WPAD URL."""
    out = []
    for u in (spec or "").split(";"):
        u = u.strip()
        if u:
            out.append(WPAD_URL if u == "auto" else u)
    return out


def host_name(url: str) -> str:
    """The host name of a stratum 1 URL, as the PAC file is asked about it."""
    rest = url.partition("://")[2]
    hostport = rest.partition("/")[0].rpartition("@")[2]
    if hostport.startswith("["):
        return hostport[1:].partition("]")[0]
    return hostport.partition(":")[0] or "localhost"


def translate(answer: str, note: Callable[[str], None] | None = None) -> str:
    """A FindProxyForURL answer in cvmfs proxy syntax: `PROXY a:1; DIRECT` -> `a:1;DIRECT`
    ("" if it names nothing usable; an empty answer is DIRECT)."""
    if not answer.strip():
        return "DIRECT"
    out = []
    for part in answer.split(";"):
        p = "".join(part.split())
        if p[:5].upper() == "SOCKS":
            if note:
                note(f"PAC: no support for SOCKS proxies, skipping {p[5:]}")
            continue
        if p == "DIRECT":
            out.append(p)
        elif p[:5].upper() == "PROXY" and len(p) > 5:
            out.append(p[5:])
        elif p and note:
            note(f"PAC: invalid proxy definition {p[:80]!r}")
    return ";".join(out)


def evaluate(script: bytes, queries: list[tuple[str, str]], seconds: float) -> list[str]:
    """FindProxyForURL(url, host) of `script` for each query, in a child process killed
    after `seconds`; a PacError says why there is no answer."""
    import subprocess

    args = [a for q in queries for a in q]
    try:
        p = subprocess.run(
            [sys.executable, "-c", _EVALUATOR, *args],
            input=script,
            capture_output=True,
            timeout=seconds,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTHONINSPECT")},
        )
    except subprocess.TimeoutExpired:
        raise PacError(f"evaluating it took longer than {seconds:g} s") from None
    except OSError as e:
        raise PacError(f"cannot run the evaluator ({e.strerror})") from None
    if p.returncode != 0:
        reason = _EXIT_REASONS.get(p.returncode, f"the evaluator failed (status {p.returncode})")
        detail = p.stderr.decode("utf-8", "replace").strip().splitlines()
        js = [line for line in detail if line.startswith("JSERROR")]
        raise PacError(reason + (f" ({js[0][:160]})" if js else ""))
    answers = p.stdout.decode("utf-8", "replace").splitlines()
    if len(answers) != len(queries):
        raise PacError("the evaluator gave no answer")
    return answers


def _read_file(path: str) -> bytes:
    """A local PAC file (a site's configured path: a link to it is meant), bounded."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise PacError(f"cannot open it ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PacError("it is not a regular file")
        data = os.read(fd, MAX_PAC + 1)
    except OSError as e:
        raise PacError(f"cannot read it ({e.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PAC:
        raise PacError(f"it is larger than {MAX_PAC} bytes")
    return data


def _fetch(fetch: Fetch, url: str) -> bytes:
    if url.startswith("file://"):  # the real client reads these too (its tests do)
        return _read_file(url[len("file://") :])
    return fetch(url, MAX_PAC)


def discover(
    fetch: Fetch,
    urls: str | None,
    hosts: list[str],
    seconds: float,
    note: Callable[[str], None],
) -> str | None:
    """The proxies (cvmfs syntax) an `auto` group stands for, or None (with a debug
    line for each PAC file that failed) when none gives a proxy. Each PAC file is
    fetched, and evaluated, within `seconds` (CVMFS_TIMEOUT_DIRECT)."""
    env = os.environ.get("http_proxy")
    if env:
        note(f"auto proxy: using {env} from the http_proxy environment variable")
        return env
    candidates = pac_urls(urls)
    if not candidates:
        note("auto proxy: CVMFS_PAC_URLS is empty, no PAC file to ask")
        return None
    queries = [(h + "/.cvmfspublished", host_name(h)) for h in hosts[:MAX_QUERIES]]
    for url in candidates:
        try:
            script = _fetch(fetch, url)
            answers = evaluate(script, queries, max(seconds, MIN_EVAL_SECONDS))
        except CvmfsError as e:  # a download's message names the URL already
            note(
                f"auto proxy: PAC file {e}" if url in str(e) else f"auto proxy: PAC file {url}: {e}"
            )
            continue
        proxies = translate(answers[0], note)
        if not proxies:
            note(f"auto proxy: PAC file {url} names no usable proxy ({answers[0][:80]!r})")
            continue
        for (q, _host), other in zip(queries[1:], answers[1:], strict=True):
            if translate(other) != proxies:
                note(f"auto proxy: PAC file {url} gives other proxies for {q}, not used")
        note(f"auto proxy: using {proxies} from PAC file {url}")
        return proxies
    note("auto proxy: no PAC file gave a proxy, the group is dropped")
    return None
