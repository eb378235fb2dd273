"""`parrot_cvmfs serve` as a stratum 1's nginx: the same answers to the same requests
(Range, If-Range, revalidation, HEAD), one `Date`, kept-alive and pipelined
connections, deadlines for slow clients, and nothing served through a symlink
beneath a repository's directory."""

from __future__ import annotations

import http.client
import os
import re
import select
import socket

import pytest

from parrot_cvmfs.server.serve import Answer, Request, StratumServer

from .servers import Nginx, serving

NAME = "serve.test.org"
BODY = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes, every offset distinct enough
BIG = os.urandom(300_000)  # above the one-write limit: goes out by sendfile
OBJ = f"/cvmfs/{NAME}/data/ab/cdef"


@pytest.fixture(scope="module")
def strata(tmp_path_factory):
    """A stratum directory: a repository with objects, a manifest, an empty file, a
    repository that is the operator's symlink, and symlinks and a fifo planted inside."""
    root = tmp_path_factory.mktemp("strata")
    repo = root / NAME
    (repo / "data" / "ab").mkdir(parents=True)
    (repo / "data" / "ab" / "cdef").write_bytes(BODY)
    (repo / "data" / "ab" / "big").write_bytes(BIG)
    (repo / "data" / "ab" / "empty").write_bytes(b"")
    (repo / ".cvmfspublished").write_bytes(b"Cabc\nRdeadbeef\n--\nsig")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret").write_bytes(b"not served")
    os.symlink(outside / "secret", repo / "data" / "ab" / "evil")
    os.symlink(outside, repo / "data" / "linked")
    os.mkfifo(repo / "data" / "ab" / "fifo")
    other = tmp_path_factory.mktemp("other-repo")
    (other / "data").mkdir()
    (other / "data" / "obj").write_bytes(b"via the operator's symlink")
    os.symlink(other, root / "alias.test.org")
    return str(root)


@pytest.fixture(scope="module")
def ours(strata):
    with serving(StratumServer(strata)) as srv:
        yield srv


def port_of(srv) -> int:
    return int(srv.url.split(":")[2].split("/")[0])


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """`data` written on a fresh connection; all the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(1 << 16):
            out += chunk
        return out


def request(port: int, method: str, path: str, headers: dict | None = None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r, r.read()
    finally:
        c.close()


# -- Range and the headers, against nginx --------------------------------------------------

RANGES = [
    "bytes=0-9",
    "bytes=10-",
    "bytes=-100",
    "bytes=-99999",
    "bytes=0-0",
    "bytes=10243-",
    "bytes=10244-",
    "bytes=100-20000",
    "bytes=5-2",
    "bytes=-0",
    "bytes=abc",
    "bytes=1-2,a",
    "bytes=0-1,",
    "bytes= 1 - 2",
    "BYTES=3-4",
    "items=0-9",
    "bytes=",
    "bytes=0-9,20-29,5000-",
    "bytes=0-,5-",
    "bytes=99999999999999999999-",
    "bytes=10244-,0-1",
]


def answers(port: int, method: str, path: str, headers: dict) -> tuple:
    """What must agree with nginx: status and the headers that describe the body, and
    the body itself for 2xx (multipart boundaries made equal)."""
    r, body = request(port, method, path, headers)
    h = {k: r.getheader(k) for k in ("Content-Length", "Content-Range", "Accept-Ranges")}
    if r.status < 300:
        for k in ("Content-Type", "Cache-Control", "ETag", "Last-Modified"):
            h[k] = r.getheader(k)
    else:  # error pages differ in wording (nginx names itself), so in length
        body, h["Content-Length"] = b"", None
    m = re.search(r"boundary=(\d+)", h.get("Content-Type") or "")
    if m:
        h["Content-Type"] = h["Content-Type"].replace(m.group(1), "B" * len(m.group(1)))
        body = body.replace(m.group(1).encode(), b"B" * len(m.group(1)))
    return r.status, h, body


@pytest.mark.nginx
def test_answers_as_nginx_does(strata, ours, tmp_path):
    """Every Range form nginx knows (single, open, suffix, unsatisfiable, malformed,
    multiple, overlapping), If-Range by ETag and by date, revalidation (304), HEAD,
    missing files: the same status, lengths, ranges, types, validators and bytes."""
    nginx = Nginx(strata, str(tmp_path / "nginx"))
    try:
        r, _ = request(nginx.port, "HEAD", OBJ, {})
        etag, date = r.getheader("ETag"), r.getheader("Last-Modified")
        cases = [(OBJ, {"Range": v}) for v in RANGES]
        cases += [(f"/cvmfs/{NAME}/data/ab/big", {"Range": v}) for v in RANGES[:8]]
        cases += [
            (f"/cvmfs/{NAME}/data/ab/big", {}),
            (f"/cvmfs/{NAME}/data/ab/empty", {}),
            (f"/cvmfs/{NAME}/data/ab/empty", {"Range": "bytes=0-"}),
            (f"/cvmfs/{NAME}/data/ab/empty", {"Range": "bytes=-5"}),
            (f"/cvmfs/{NAME}/.cvmfspublished", {}),
            (f"/cvmfs/{NAME}/.cvmfspublished", {"Range": "bytes=0-3"}),
            (OBJ, {"Range": "bytes=0-9", "If-Range": etag}),
            (OBJ, {"Range": "bytes=0-9", "If-Range": '"0-0"'}),
            (OBJ, {"Range": "bytes=0-9", "If-Range": date}),
            (OBJ, {"Range": "bytes=0-9", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}),
            (OBJ, {"If-None-Match": etag}),
            (OBJ, {"If-None-Match": '"0-0"'}),
            (OBJ, {"If-Modified-Since": date}),
            (OBJ, {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}),
            (f"/cvmfs/{NAME}/data/ab/missing", {}),
            (f"/cvmfs/{NAME}/data/ab/missing", {"Range": "bytes=0-1"}),
        ]
        for method in ("GET", "HEAD"):
            for path, headers in cases:
                want = answers(nginx.port, method, path, headers)
                got = answers(port_of(ours), method, path, headers)
                assert got == want, (method, path, headers)
    finally:
        nginx.stop()


def test_one_date_and_the_stratum_headers(ours):
    head = raw_exchange(
        port_of(ours), f"GET {OBJ} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    ).split(b"\r\n\r\n")[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    names = [line.split(":")[0].lower() for line in lines[1:]]
    assert names.count("date") == 1
    assert len(names) == len(set(names))
    assert "Cache-Control: max-age=259200" in lines
    assert "Connection: close" in lines


def test_single_ranges_and_416(ours):
    port = port_of(ours)
    r, body = request(port, "GET", OBJ, {"Range": "bytes=10-19"})
    assert (r.status, body, r.getheader("Content-Range")) == (206, BODY[10:20], "bytes 10-19/10244")
    r, body = request(port, "GET", OBJ, {"Range": "bytes=-4"})
    assert (r.status, body) == (206, b"tail")
    r, body = request(port, "GET", OBJ, {"Range": "bytes=10000-"})
    assert (r.status, body) == (206, BODY[10000:])
    r, _ = request(port, "GET", OBJ, {"Range": "bytes=20000-"})
    assert (r.status, r.getheader("Content-Range")) == (416, "bytes */10244")
    r, body = request(port, "HEAD", OBJ, {"Range": "bytes=1-2"})
    assert (r.status, r.getheader("Content-Length"), body) == (206, "2", b"")
    r, body = request(port, "GET", f"/cvmfs/{NAME}/data/ab/big", {"Range": "bytes=100000-"})
    assert (r.status, body) == (206, BIG[100000:])


# -- connections -------------------------------------------------------------------------------


def test_keep_alive_and_pipelining(ours):
    """Many requests on one connection, answered in order; pipelined ones too."""
    c = http.client.HTTPConnection("127.0.0.1", port_of(ours), timeout=10)
    c.connect()
    local = c.sock.getsockname()
    for i in range(30):
        path = f"/cvmfs/{NAME}/data/ab/big" if i % 3 == 0 else OBJ
        c.request("GET", path)
        r = c.getresponse()
        assert r.status == 200 and r.read() == (BIG if i % 3 == 0 else BODY)
        assert r.getheader("Connection") == "keep-alive"
        assert c.sock is not None and c.sock.getsockname() == local  # not reconnected
    c.close()
    one = f"GET {OBJ} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    last = f"HEAD {OBJ} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    lf_only = f"GET {OBJ} HTTP/1.1\nHost: x\n\n".encode()
    out = raw_exchange(port_of(ours), one + b"\r\n" + lf_only + one + last)
    assert out.count(b"HTTP/1.1 200 OK") == 4
    assert out.count(BODY) == 3


def test_http10_closes_unless_kept_alive(ours):
    out = raw_exchange(port_of(ours), f"GET {OBJ} HTTP/1.0\r\n\r\n".encode())
    assert out.endswith(BODY) and b"Connection: close" in out


def test_slow_clients_hold_no_one_else_and_time_out(strata):
    """With one connection slot: a client sending half a request, then one that never
    reads a big answer, each lose the slot at their deadline, and the next client is
    answered; without deadlines the third client would wait for ever."""
    srv = StratumServer(strata, max_connections=1)
    srv.head_deadline = srv.send_timeout = srv.idle_timeout = 0.5
    with serving(srv):
        port = port_of(srv)
        loris = socket.create_connection(("127.0.0.1", port))
        loris.sendall(b"GET /cvmfs/" + NAME.encode())  # and nothing more
        r, body = request(port, "GET", OBJ)
        assert (r.status, body) == (200, BODY)
        assert loris.recv(1 << 16).startswith(b"HTTP/1.1 408")
        loris.close()
        sink = socket.create_connection(("127.0.0.1", port))
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(50):  # far more than the socket buffers hold
            sink.sendall(f"GET /cvmfs/{NAME}/data/ab/big HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        r, body = request(port, "GET", OBJ)
        assert (r.status, body) == (200, BODY)
        sink.close()


def test_idle_kept_alive_connections_make_room(strata):
    """With every slot held by a kept-alive connection waiting for its next request,
    a new client is answered at once (the oldest idle one is closed, as nginx does),
    not after the idle timeout."""
    srv = StratumServer(strata, max_connections=2)
    srv.idle_timeout = 600  # far beyond the client's patience below
    with serving(srv):
        port = port_of(srv)
        kept = []
        for _ in range(2):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", OBJ)
            assert c.getresponse().read() == BODY
            kept.append(c)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", OBJ)
        assert c.getresponse().read() == BODY
        # one of them (the one idle longest) was closed for it
        readable = select.select([k.sock for k in kept], [], [], 10)[0]
        assert readable and all(s.recv(1) == b"" for s in readable)
        for k in (*kept, c):
            k.close()


def test_concurrent_clients_do_not_queue(ours):
    """A client that connected and sent nothing does not delay another."""
    idle = [socket.create_connection(("127.0.0.1", port_of(ours))) for _ in range(5)]
    try:
        r, body = request(port_of(ours), "GET", OBJ)
        assert (r.status, body) == (200, BODY)
    finally:
        for s in idle:
            s.close()


def test_bounded_request_heads(ours):
    port = port_of(ours)
    many = "".join(f"X-{i}: y\r\n" for i in range(200))
    assert raw_exchange(port, f"GET {OBJ} HTTP/1.1\r\n{many}\r\n".encode()).startswith(
        b"HTTP/1.1 431"
    )
    huge = f"GET {OBJ} HTTP/1.1\r\nX: {'y' * 40000}\r\n\r\n".encode()
    assert raw_exchange(port, huge).startswith(b"HTTP/1.1 431")
    for bad in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET\xff / HTTP/1.1\r\n\r\n",
        b"GET /cvmfs/\x1b[2J HTTP/1.1\r\n\r\n",
    ):
        assert re.match(rb"HTTP/1.1 (400|505) ", raw_exchange(port, bad)), bad
    out = raw_exchange(port, f"POST {OBJ} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 405")


def test_server_close_ends_kept_alive_connections(strata):
    srv = StratumServer(strata)
    with serving(srv):
        c = http.client.HTTPConnection("127.0.0.1", port_of(srv), timeout=10)
        c.request("GET", OBJ)
        assert c.getresponse().read() == BODY
    # shut down and closed: the kept connection answers no more
    c.sock.sendall(f"GET {OBJ} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert c.sock.recv(100) == b""
    c.close()


# -- what is served ---------------------------------------------------------------------------


def test_only_files_beneath_the_repository(ours):
    """A symlink beneath a repository's directory is never followed (to a file or a
    directory outside); dot-dot in any spelling and a fifo are refused; an entry of
    the served directory that is the operator's symlink is served."""
    port = port_of(ours)
    for path in (
        f"/cvmfs/{NAME}/data/ab/evil",
        f"/cvmfs/{NAME}/data/linked/secret",
        f"/cvmfs/{NAME}/data/ab/fifo",
        f"/cvmfs/{NAME}/data/ab",
        f"/cvmfs/{NAME}/../{NAME}/data/ab/cdef",
        f"/cvmfs/{NAME}/data/%2e%2e/data/ab/cdef",
        f"/cvmfs/{NAME}/data/ab/cdef%00",
        "/etc/passwd",
        f"/cvmfs/{NAME}",
    ):
        r, body = request(port, "GET", path)
        assert r.status == 404 and b"not served" not in body, path
    r, body = request(port, "GET", "/cvmfs/alias.test.org/data/obj")
    assert (r.status, body) == (200, b"via the operator's symlink")
    r, body = request(port, "GET", f"/cvmfs/{NAME}//data/ab/cdef?x=1")
    assert (r.status, body) == (200, BODY)
    # the absolute form a proxy sends
    r, body = request(port, "GET", f"http://127.0.0.1:{port}{OBJ}")
    assert (r.status, body) == (200, BODY)


def test_routes_answer_before_the_files(strata):
    seen: list[Request] = []

    def geo(req: Request) -> Answer:
        seen.append(req)
        return Answer(200, b"2,1,3\n")

    srv = StratumServer(strata)
    srv.add_route("api/v1.0/order/", geo)
    with serving(srv):
        r, body = request(port_of(srv), "GET", f"/cvmfs/{NAME}/api/v1.0/order/x/a,b,c")
        assert (r.status, body) == (200, b"2,1,3\n")
        r, body = request(port_of(srv), "GET", OBJ)
        assert body == BODY
        # the Geo-API is always routed; with no configured order, the order asked
        r, body = request(port_of(srv), "GET", f"/cvmfs/{NAME}/api/v1.0/geo/x/a,b,c")
        assert (r.status, body) == (200, b"1,2,3\n")
    assert [(q.repository, q.rest, q.method) for q in seen] == [(NAME, "x/a,b,c", "GET")]


@pytest.mark.unprivileged
def test_unreadable_files_are_forbidden_as_nobody():
    """The server run as an unprivileged user answers 403 (as nginx does) for a file
    or a directory it may not read, and serves the rest; serve.py and geo.py need only
    the standard library, so nobody runs a copy of them."""
    import shutil
    import subprocess
    import tempfile

    import parrot_cvmfs.server.serve as serve_module

    from .test_unprivileged import AS_NOBODY, _interpreter_for_nobody

    d = tempfile.mkdtemp(prefix="serve-nobody.")
    try:
        os.chmod(d, 0o755)
        pkg = os.path.join(d, "stratum")
        os.mkdir(pkg)
        for name in ("serve.py", "geo.py"):
            shutil.copy(os.path.join(os.path.dirname(serve_module.__file__), name), pkg)
        open(os.path.join(pkg, "__init__.py"), "w").close()
        for sub in ("stratum", *(f"stratum/{n}" for n in os.listdir(pkg))):
            os.chmod(os.path.join(d, sub), 0o755)
        data = os.path.join(d, "root", NAME, "data")
        os.makedirs(os.path.join(data, "closed"))
        for path, mode in (("open", 0o644), ("secret", 0o600), ("closed/obj", 0o644)):
            with open(os.path.join(data, path), "wb") as f:
                f.write(b"bytes of " + path.encode())
            os.chmod(os.path.join(data, path), mode)
        os.chmod(os.path.join(data, "closed"), 0o700)
        for sub in ("root", f"root/{NAME}", f"root/{NAME}/data"):
            os.chmod(os.path.join(d, sub), 0o755)
        script = (
            f"import sys; sys.path.insert(0, {d!r}); from stratum.serve import StratumServer; "
            f"s = StratumServer({os.path.join(d, 'root')!r}); "
            "print(s.server_address[1], flush=True); s.serve_forever(0.05)"
        )
        proc = subprocess.Popen(
            [*AS_NOBODY, _interpreter_for_nobody(), "-c", script], stdout=subprocess.PIPE
        )
        try:
            port = int(proc.stdout.readline())
            got = {
                p: request(port, "GET", f"/cvmfs/{NAME}/data/{p}")[0].status
                for p in ("open", "secret", "closed/obj")
            }
            assert got == {"open": 200, "secret": 403, "closed/obj": 403}
        finally:
            proc.kill()
            proc.wait()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_refusal_reaches_a_client_still_sending(ours):
    """A head far over the bound is refused while the client is still writing it: the
    431 arrives whole (closing with unread input would reset the connection and
    destroy the answer in flight: the server reads and drops the rest for a moment)."""
    port = port_of(ours)
    head = b"GET " + OBJ.encode() + b" HTTP/1.1\r\nX-A: " + b"a" * 200_000 + b"\r\n\r\n"
    for _ in range(5):
        assert raw_exchange(port, head).startswith(b"HTTP/1.1 431 ")


def test_a_request_read_is_never_closed_for_room(strata):
    """With one slot, a client whose request the server has begun to read is not the
    idle connection closed for the next client: each of many pairs is answered (the
    closer once shut down a connection between its recv() and leaving the idle list)."""
    srv = StratumServer(strata, max_connections=1)
    with serving(srv):
        port = port_of(srv)
        for _ in range(150):
            first = socket.create_connection(("127.0.0.1", port))
            first.sendall(f"GET {OBJ} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            second = socket.create_connection(("127.0.0.1", port))
            second.sendall(f"GET {OBJ} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            for s in (first, second):
                s.settimeout(10)
                out = b""
                while chunk := s.recv(1 << 16):
                    out += chunk
                assert out.startswith(b"HTTP/1.1 200") and out.endswith(BODY)
                s.close()
