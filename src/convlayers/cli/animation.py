"""``convlayers animate``: a GIF of the window sliding, for your own sizes."""

from __future__ import annotations

import argparse
import re
from typing import Any

from convlayers.cli._common import CLIError, matrix, output_file, pair, scalar_or_pair


def register(sub: Any) -> None:
    """Add the ``animate`` command."""
    p = sub.add_parser(
        "animate", help="GIF of a convolution or pooling window sliding over an input",
        description="Write an animated GIF, one frame per output cell: the input with its "
        "padding (grey, dashed) and numbers, the window, the kernel, the output filling in, and "
        "the window's sum written out under a title that states the layer. A transposed "
        "convolution is drawn as the equivalent convolution over the zero-inserted, padded "
        "input. Sizes are one integer or ROWSxCOLS.",
    )
    p.add_argument("--op", choices=("conv", "conv_transpose", "max_pool", "avg_pool"),
                   default="conv")
    p.add_argument("--input", type=pair, default=(5,), metavar="N", help="input size (default 5)")
    p.add_argument("--kernel-size", type=pair, default=None, metavar="K",
                   help="kernel size (default 3, or the shape of --kernel)")
    p.add_argument("--stride", type=pair, default=None, metavar="S",
                   help="default 1 for convolutions, the kernel size for pools")
    p.add_argument("--padding", type=pair, default=(0,), metavar="P")
    p.add_argument("--dilation", type=pair, default=(1,), metavar="D")
    p.add_argument("--output-padding", type=pair, default=(0,), metavar="OP",
                   help="conv_transpose only")
    p.add_argument("--ceil-mode", action="store_true", help="pools only")
    p.add_argument("--values", metavar="SPEC",
                   help="input values, rows separated by ';' (default 1, 2, 3, ...)")
    p.add_argument("--kernel", metavar="SPEC",
                   help="kernel weights for conv/conv_transpose, rows separated by ';', e.g. "
                   "'1,0,-1;1,0,-1;1,0,-1' (default all ones)")
    p.add_argument("--weights", dest="kernel", metavar="SPEC", help=argparse.SUPPRESS)
    p.add_argument("--fps", type=float, default=2.0, help="frames per second (default 2)")
    p.add_argument("-o", "--output", required=True, metavar="GIF", help="the .gif to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the GIF with :func:`convlayers.viz.animate`."""
    from convlayers.viz import animate

    target = output_file(args.output, "gif", "-o/--output")
    values = None if args.values is None else matrix(args.values, "values")
    size_spec = args.kernel_size
    if args.kernel is not None and re.fullmatch(r"\s*\d+\s*(x\s*\d+\s*)?", args.kernel):
        # the old spelling: '--kernel 3' was the kernel size (weights have ',' or ';')
        if size_spec is not None:
            raise CLIError("--kernel-size is given; write the weights with ',' or ';', e.g. "
                           "--kernel '1,0,-1;1,0,-1;1,0,-1'")
        size_spec, args.kernel = pair(args.kernel), None
    weights = None if args.kernel is None else matrix(args.kernel, "kernel")
    stride = None if args.stride is None else scalar_or_pair(args.stride)
    if size_spec is not None:
        kernel_size: int | tuple[int, ...] = scalar_or_pair(size_spec)
    else:
        kernel_size = 3 if weights is None else (len(weights), len(weights[0]))
    data = animate(args.op, scalar_or_pair(args.input), kernel_size, stride,
                   scalar_or_pair(args.padding), scalar_or_pair(args.dilation), target,
                   values, kernel=weights, output_padding=scalar_or_pair(args.output_padding),
                   ceil_mode=args.ceil_mode, fps=args.fps)
    print(f"wrote {target} ({len(data):,} bytes)")
    return 0
