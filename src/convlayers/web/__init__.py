"""The local explorer: a thin web server over the library, and the page it serves.

Start it with ``convlayers explore`` (or :func:`serve`). Three panels: filters on the sample
photo or an upload, the arithmetic playground (sizes and every window of a convolution or
pooling), and networks (top classes, feature maps, kernels, summary table). Everything shown
is computed by the library; the server validates requests, bounds the work and encodes the
results; the page only draws them. Nothing is fetched from anywhere but this server.

Needs the ``web`` extra: ``pip install 'convlayers[web]'`` (Starlette and uvicorn).
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["bind", "create_app", "serve"]


def create_app(**kwargs: Any) -> Any:
    """Build the Starlette app; see :func:`convlayers.web.app.create_app`."""
    try:
        from convlayers.web.app import create_app as build
    except ImportError as exc:
        raise ImportError(f"the explorer needs Starlette and uvicorn: pip install "
                          f"'convlayers[web]' ({exc})") from exc
    return build(**kwargs)


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


#: Seconds a connection has to send a complete request head, from its opening or from the end
#: of its last response; then it is closed (idle and slowly-sending clients alike).
HEADER_TIMEOUT = 10.0
#: Requests in progress at once; more get 503. Idle connections do not count.
MAX_REQUESTS = 64
#: Open idle connections kept at most; beyond, the oldest is closed for the newcomer.
MAX_IDLE = 256


def serve(app: Any, sock: socket.socket, *, log_level: str = "warning") -> None:
    """Serve ``app`` on an already bound socket until interrupted (uvicorn, one process).

    Idle connections cannot starve real ones: a connection must send its request head within
    :data:`HEADER_TIMEOUT` seconds, only connections with a request in progress count towards
    the :data:`MAX_REQUESTS` that uvicorn's ``limit_concurrency`` guards, and at most
    :data:`MAX_IDLE` idle connections stay open (keep-alive idles close after 5 s)."""
    try:
        import uvicorn

        from convlayers.web._protocol import guarded_h11
    except ImportError as exc:
        raise ImportError(f"the explorer needs uvicorn: pip install 'convlayers[web]' "
                          f"({exc})") from exc
    config = uvicorn.Config(app, log_level=log_level, limit_concurrency=MAX_REQUESTS,
                            timeout_keep_alive=5,
                            http=guarded_h11(HEADER_TIMEOUT, MAX_IDLE))
    uvicorn.Server(config).run(sockets=[sock])
