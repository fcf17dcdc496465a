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


def serve(app: Any, sock: socket.socket, *, log_level: str = "warning") -> None:
    """Serve ``app`` on an already bound socket until interrupted (uvicorn, one process)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(f"the explorer needs uvicorn: pip install 'convlayers[web]' "
                          f"({exc})") from exc
    config = uvicorn.Config(app, log_level=log_level, limit_concurrency=64,
                            timeout_keep_alive=5)
    uvicorn.Server(config).run(sockets=[sock])
