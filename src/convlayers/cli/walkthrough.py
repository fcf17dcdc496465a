"""``convlayers explain pool|conv``: a pooling or a convolution, window by window."""

from __future__ import annotations

import argparse
from typing import Any

from convlayers.cli._common import matrix, pair, scalar_or_pair

_SPEC = "rows separated by ';', values by ',' (start with '=' if it begins with '-': --input=-1,2;3,4)"


def register(sub: Any) -> None:
    """Add ``explain`` with its ``pool`` and ``conv`` subcommands."""
    p = sub.add_parser(
        "explain", help="explain a pooling or a convolution on a small input, step by step",
        description="List every window, its values and the value it produces, then the "
        "output-size formula with the numbers filled in. Without --input, the course "
        "chapter's example is used.",
    )
    what = p.add_subparsers(title="what", dest="what", metavar="{pool,conv}", required=True)
    pool = what.add_parser("pool", help="max or average pooling",
                           description="Explain 2-D pooling (default: 2x2 max pooling of the "
                           "chapter's 4x4 example).")
    pool.add_argument("--kind", choices=("max", "avg"), default="max")
    pool.add_argument("--input", metavar="SPEC", help=f"2-D input: {_SPEC}")
    pool.add_argument("--kernel-size", type=pair, default=(2,), metavar="K")
    pool.add_argument("--stride", type=pair, default=None, metavar="S",
                      help="default: the kernel size")
    pool.add_argument("--padding", type=pair, default=(0,), metavar="P")
    pool.set_defaults(run=run_pool)

    conv = what.add_parser("conv", help="a convolution (no kernel flip)",
                           description="Explain a 2-D convolution (default: the numbers 1..16 "
                           "and the vertical-edge kernel 1,0,-1 on each row).")
    conv.add_argument("--input", metavar="SPEC", help=f"2-D input: {_SPEC}")
    conv.add_argument("--kernel", metavar="SPEC", help=f"2-D kernel: {_SPEC}")
    conv.add_argument("--stride", type=pair, default=(1,), metavar="S")
    conv.add_argument("--padding", type=pair, default=(0,), metavar="P")
    conv.add_argument("--dilation", type=pair, default=(1,), metavar="D")
    conv.set_defaults(run=run_conv)


def run_pool(args: argparse.Namespace) -> int:
    """Print :func:`convlayers.explain.explain_pool` for the arguments."""
    from convlayers.explain import explain_pool

    x = None if args.input is None else matrix(args.input, "input")
    stride = None if args.stride is None else scalar_or_pair(args.stride)
    print(explain_pool(x, args.kind, scalar_or_pair(args.kernel_size), stride,
                       scalar_or_pair(args.padding)))
    return 0


def run_conv(args: argparse.Namespace) -> int:
    """Print :func:`convlayers.explain.explain_conv` for the arguments."""
    from convlayers.explain import explain_conv

    x = None if args.input is None else matrix(args.input, "input")
    k = None if args.kernel is None else matrix(args.kernel, "kernel")
    print(explain_conv(x, k, scalar_or_pair(args.stride), scalar_or_pair(args.padding),
                       scalar_or_pair(args.dilation)))
    return 0
