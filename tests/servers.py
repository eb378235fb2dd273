"""Real HTTP servers on loopback for the tests: the built-in stratum server with
fault injection and request counting, nginx, and a small forward proxy."""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from parrot_cvmfs.server.serve import StratumHandler, StratumServer


@contextlib.contextmanager
def serving(srv: StratumServer):
    """`srv` answering in the background for the block; shut down and closed after it
    (its loop looks for the shutdown every 50 ms, so a test does not wait 0.5 s for it)."""
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(proc: subprocess.Popen, port: int, what: str, timeout: float) -> None:
    """Until `proc` accepts connections on the loopback `port`; its stderr if it dies."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} failed: " + proc.stderr.read().decode()) from None
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def dead_url(name: str = "") -> str:
    """An http URL on a loopback port where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/cvmfs/{name}".rstrip("/")


class FaultyHandler(StratumHandler):
    def do_GET(self):  # noqa: N802
        srv = self.server
        for pattern, body in srv.answers.items():  # a fixed answer: a PAC file, a Geo-API
            if pattern in self.path:
                with srv.lock:
                    srv.requests[self.path] += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        super().do_GET()

    def _read_request(self) -> bool:
        """With `per_connection` set, the request after that many answers is read and
        the connection closed without an answer (a server that drops idle kept-alive
        connections, caught in the race)."""
        answered = getattr(self, "_answered", 0)
        limit = self.server.per_connection
        if limit is not None and answered >= limit:
            super()._read_request()
            return False
        self._answered = answered + 1
        return super()._read_request()

    def _send_file(self, head_only: bool) -> None:
        srv = self.server
        path = urllib.parse.urlsplit(self.path).path
        with srv.lock:
            srv.requests[path] += 1
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            self._send_faulty(path, head_only)
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _send_faulty(self, path: str, head_only: bool) -> None:
        srv = self.server
        for pattern, delay in srv.delays.items():
            if pattern in path:
                time.sleep(delay)
        for pattern, status in srv.statuses.items():
            if pattern in path:
                self.send_error(status)
                return
        for pattern, rate in srv.throttles.items():
            if pattern in path:  # the body trickles: a download caught in the middle
                local = self._local_path()
                with open(local, "rb") as f:
                    body = f.read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                step = max(1, rate // 20)
                for i in range(0, len(body), step):
                    self.wfile.write(body[i : i + step])
                    self.wfile.flush()
                    time.sleep(0.05)
                return
        for pattern, fn in srv.rewrites.items():
            if pattern in path:
                local = self._local_path()
                with open(local, "rb") as f:
                    body = fn(f.read())
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head_only:
                    self.wfile.write(body)
                return
        super()._send_file(head_only)


class FaultyServer(StratumServer):
    """StratumServer whose responses can be delayed, replaced or rewritten per path."""

    def __init__(self, root: str, host: str = "127.0.0.1"):
        self.lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()
        self.answers: dict[str, bytes] = {}  # path pattern -> the whole body of a 200
        self.delays: dict[str, float] = {}
        self.statuses: dict[str, int] = {}
        self.rewrites: dict = {}
        self.throttles: dict[str, int] = {}  # path pattern -> bytes per second
        self.accepts = 0  # TCP connections accepted
        self.per_connection: int | None = None  # answers per connection, then it is dropped
        self.in_flight = self.max_in_flight = 0  # requests being answered (at most)
        super().__init__(root, host)
        self.RequestHandlerClass = FaultyHandler

    def _connection(self, conn) -> None:
        with self.lock:
            self.accepts += 1
        super()._connection(conn)

    def data_requests(self) -> dict[str, int]:
        with self.lock:
            return {p: n for p, n in self.requests.items() if "/data/" in p}


class ForwardProxy(ThreadingHTTPServer):
    """A minimal HTTP forward proxy (absolute-URI GETs) that logs what it forwards."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.log: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        with self.server.lock:
            self.server.log.append(self.path)
        u = urllib.parse.urlsplit(self.path)
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
            conn.request("GET", u.path, headers={"Host": u.netloc})
            resp = conn.getresponse()
            body = resp.read()
        except OSError:
            self.send_response(502)
            self.send_header("X-Squid-Error", "ERR_CONNECT_FAIL 111")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(resp.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Nginx:
    """nginx serving a stratum directory at /cvmfs/, as stratum 1 sites run it."""

    def __init__(self, root: str, workdir: str):
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(exe):
            raise RuntimeError("nginx is not installed (.ci/run installs it)")
        self.port = free_port()
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""{user}worker_processes 2;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 512; }}
http {{
  access_log {workdir}/access.log;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  sendfile on;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{self.port};
    location /cvmfs/ {{
      alias {os.path.abspath(root)}/;
      location ~ /\\.cvmfs {{ expires 61s; types {{ }} default_type application/x-cvmfs; }}
      expires 3d;
    }}
  }}
}}
""")
        # its own process group: stop() takes the workers down with the master
        self.proc = subprocess.Popen(
            [exe, "-c", conf, "-p", workdir], stderr=subprocess.PIPE, start_new_session=True
        )
        wait_for_port(self.proc, self.port, "nginx", 10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cvmfs"

    def access_log(self) -> list[str]:
        try:
            with open(os.path.join(self.workdir, "access.log")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


class Squid:
    """A real Squid forward proxy (Debian `squid`) on a loopback port: memory cache
    only, every request in `access.log` with its cache result (TCP_MISS, TCP_HIT...)."""

    def __init__(self):
        import tempfile

        exe = shutil.which("squid") or "/usr/sbin/squid"
        if not os.path.exists(exe):
            raise RuntimeError("squid is not installed (.ci/run installs it)")
        self.port = free_port()
        # not below pytest's private tmp: squid's own user must reach its logs
        self.workdir = workdir = tempfile.mkdtemp(prefix="squid.")
        os.chmod(workdir, 0o755)
        if os.geteuid() == 0:  # squid drops to its own user, which must write the logs
            import pwd

            pw = pwd.getpwnam("proxy")
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
        conf = os.path.join(workdir, "squid.conf")
        with open(conf, "w") as f:
            f.write(f"""http_port 127.0.0.1:{self.port}
pid_filename {workdir}/squid.pid
access_log stdio:{workdir}/access.log squid
cache_log {workdir}/cache.log
cache_store_log none
coredump_dir {workdir}
netdb_filename none
pinger_enable off
logfile_rotate 0
shutdown_lifetime 0 seconds
cache_mem 256 MB
maximum_object_size_in_memory 64 MB
maximum_object_size 64 MB
acl loopback src 127.0.0.0/8
http_access allow loopback
http_access deny all
refresh_pattern . 0 20% 4320
""")
        self.proc = subprocess.Popen(
            [exe, "-N", "-f", conf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        wait_for_port(self.proc, self.port, "squid", 30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> list[list[str]]:
        """Fields of each line: time, elapsed, client, result/status, bytes, method, URL..."""
        try:
            with open(os.path.join(self.workdir, "access.log")) as f:
                return [line.split() for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
