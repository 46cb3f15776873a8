"""A real S3-compatible server on loopback (moto's server, a subprocess) and a fault-injecting proxy in front of it.

Both listen on 127.0.0.1 only. The proxy forwards every request to the server and answers a seeded share of them
with 503 ServiceUnavailable (or drops the connection unanswered), bounded in count; it never fails the same
request (method + path + query) more than ``per_key`` times (:meth:`FaultProxy.arm`), so a client that retries a few times always gets
through and a run's outcome does not depend on which requests happened to be picked.
"""
from __future__ import annotations

import http.client
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_HOP = {"connection", "keep-alive", "expect", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "content-length"}
_503 = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
        b"<Message>injected by the test proxy</Message></Error>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``moto_server`` from this interpreter's environment on a free loopback port; ``stop()`` ends it."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        exe = Path(sys.executable).parent / "moto_server"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start on port {self.port} (exit {self.proc.poll()})")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 forwarding to ``upstream`` (host, port).

    :meth:`arm` sets the share of requests to fail (0 = a plain forwarder), the total budget of faults, the share
    of them that drop the connection instead of answering 503, and how often one request may fail, and resets the
    counters: :attr:`faults` counts what was injected, :attr:`requests` what came in, by method.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self.arm(0.0, 0)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                verdict = proxy._decide(self.command, self.path)
                if verdict == "reset":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if verdict == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_503)))
                    self.end_headers()
                    self.wfile.write(_503)
                    return
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
                # A HEAD answer has no body but tells the object's size: keep the server's Content-Length.
                self.send_header("Content-Length", length if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._local = threading.local()
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def arm(self, rate: float, max_faults: int, *, seed: int = 0, reset_share: float = 0.0, per_key: int = 2) -> None:
        """Fail a share ``rate`` of the requests from now on, at most ``max_faults`` in all and at most ``per_key``
        times the same request; counters restart."""
        with self._lock:
            self.rate, self.max_faults, self.reset_share, self.per_key = rate, max_faults, reset_share, per_key
            self._rng = random.Random(seed)
            self.faults: Counter[str] = Counter()
            self.requests: Counter[str] = Counter()
            self._failed_keys: Counter[str] = Counter()

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            self.requests[method] += 1
            key = f"{method} {path}"
            if sum(self.faults.values()) >= self.max_faults or self._failed_keys[key] >= self.per_key:
                return ""
            if self._rng.random() >= self.rate:
                return ""
            verdict = "reset" if self._rng.random() < self.reset_share else "503"
            self._failed_keys[key] += 1
            self.faults[verdict] += 1
            return verdict

    def _forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        for attempt in range(2):  # a kept-alive upstream connection may have been closed by the server
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(*self.upstream, timeout=30)
            try:
                out = {k: v for k, v in headers.items() if k.lower() not in _HOP}
                if headers.get("Transfer-Encoding", "").lower() == "chunked":  # forwarded as it came
                    conn.request(method, path, body=iter([body] if body else []), headers=out, encode_chunked=True)
                else:
                    out["Content-Length"] = str(len(body))
                    conn.request(method, path, body=body, headers=out)
                resp = conn.getresponse()
                return resp.status, resp.getheaders(), resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
