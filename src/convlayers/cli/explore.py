"""``convlayers explore``: the local web explorer (filters, arithmetic, networks)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from convlayers.cli._common import CLIError


def register(sub: Any) -> None:
    """Add the ``explore`` command."""
    p = sub.add_parser(
        "explore", help="start the local web explorer and print its address",
        description="Serve a page for trying filters on photos, stepping through the windows "
        "of a convolution or pooling, and looking inside networks. Everything runs locally; "
        "the page loads nothing from the internet.",
    )
    p.add_argument("--port", type=int, default=8000, metavar="N",
                   help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--weights", metavar="FILE",
                   help="weights of a digits SmallCNN (safetensors, .npz or torch.save file), "
                   "or an ONNX model (FILE.onnx, ImageNet-normalised when it takes 3 channels), "
                   "to offer in the networks panel")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="heavy requests computed at once (default 2)")
    p.set_defaults(run=run_explore)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_explore(args: argparse.Namespace) -> int:
    """Bind, print the address, serve until Ctrl+C."""
    from convlayers.web import bind, create_app, serve

    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be between 0 and 65535, got {args.port}")
    if args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    hosts = ["127.0.0.1", "localhost", "[::1]", "::1"]
    if not _loopback(args.host):
        hosts = ["*"] if args.host in ("0.0.0.0", "::") else [*hosts, args.host]
    try:
        app = create_app(weights=args.weights, workers=args.workers, allowed_hosts=hosts)
    except (ValueError, OSError) as exc:
        raise CLIError(f"--weights {args.weights!r}: {exc}") from exc
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"convlayers explorer: http://{shown}:{port}/  (Ctrl+C to stop)", flush=True)
    if not _loopback(args.host):
        print(f"warning: listening on {args.host}: other computers on your network can use "
              "this server", file=sys.stderr)
    serve(app, sock)
    return 0
