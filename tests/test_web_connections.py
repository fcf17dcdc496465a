"""Issue 16.13: idle TCP connections must not lock the explorer out.

64 idle connections made every request a 503 for as long as they stayed open. Here the real
server (:func:`convlayers.web.serve` on the real app) runs in a subprocess on 127.0.0.1, with
its timeouts shortened; real sockets hold connections open, bounded in count and time.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

HEADER_TIMEOUT = 2.0
MAX_IDLE = 32

_SERVER = f"""
import convlayers.web as web
web.HEADER_TIMEOUT = {HEADER_TIMEOUT}
web.MAX_IDLE = {MAX_IDLE}
sock = web.bind("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
web.serve(web.create_app(), sock)
"""


@pytest.fixture(scope="module")
def port():
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        deadline = time.monotonic() + 60
        while True:  # wait until it answers
            try:
                assert _get(port) == 200
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.2)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def _closed_by_server(sock: socket.socket, wait: float) -> bool:
    """Whether the server closes ``sock`` within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _open(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]


def test_idle_connections_do_not_make_requests_fail(port: int) -> None:
    idle = _open(port, 80)  # more than the 64 that locked the server out
    try:
        time.sleep(0.3)
        assert [_get(port) for _ in range(3)] == [200, 200, 200]
        # beyond MAX_IDLE the oldest idle connections were closed at once, not after the timeout
        closed = sum(_closed_by_server(s, 0.05) for s in idle)
        assert closed >= 80 - MAX_IDLE
    finally:
        for s in idle:
            s.close()


def test_idle_and_slow_connections_are_closed_after_the_header_timeout(port: int) -> None:
    quiet = _open(port, 4)
    slow = _open(port, 2)
    for s in slow:  # half a request head, never finished
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    t0 = time.monotonic()
    try:
        assert all(_closed_by_server(s, HEADER_TIMEOUT + 3) for s in quiet + slow)
        assert time.monotonic() - t0 < HEADER_TIMEOUT + 3
        assert _get(port) == 200
    finally:
        for s in quiet + slow:
            s.close()


def test_a_keep_alive_connection_still_serves_several_requests(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()
