"""``convlayers shape`` and ``convlayers params``: output sizes and parameter counts."""

from __future__ import annotations

import argparse
from typing import Any

from convlayers.cli._common import CLIError, pair


def register(sub: Any) -> None:
    """Add the ``shape`` and ``params`` commands."""
    p = sub.add_parser(
        "shape", help="output size of a convolution, pooling or transposed convolution",
        description="Print the output-size formula with your numbers filled in. Sizes are "
        "one integer (both axes) or ROWSxCOLS, e.g. 32 or 32x24. With --stack, the output size "
        "and receptive field through a stack of layers.",
        epilog="Stack example: convlayers shape --input 32 --stack 'conv3,s2,p1; conv3; pool2' "
        "(each layer: conv or pool and its kernel size, then optional ,sN stride, ,pN padding "
        "or ,same, ,dN dilation).",
    )
    p.add_argument("--input", type=pair, default=None, metavar="N", help="input size")
    p.add_argument("--kernel-size", dest="kernel", type=pair, default=None, metavar="K",
                   help="kernel size")
    p.add_argument("--kernel", dest="kernel", type=pair, default=None, help=argparse.SUPPRESS)
    p.add_argument("--stack", metavar="LAYERS", default=None,
                   help="a stack of layers, e.g. 'conv3,s2; conv3; pool2': receptive field and "
                   "(with --input) output size after each")
    p.add_argument("--stride", type=pair, default=None, metavar="S",
                   help="step of the window (default 1; for --pool the kernel size)")
    p.add_argument("--padding", type=padding_spec, default=(0,), metavar="P",
                   help="padding (default 0), or same / valid (PyTorch's padding='same')")
    p.add_argument("--dilation", type=pair, default=(1,), metavar="D",
                   help="spacing between kernel taps (default 1)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--pool", action="store_true", help="a pooling layer")
    kind.add_argument("--transposed", action="store_true", help="a transposed convolution")
    p.add_argument("--ceil-mode", action="store_true", help="with --pool: round up (PyTorch)")
    p.add_argument("--output-padding", type=pair, default=(0,), metavar="OP",
                   help="with --transposed: extra size at the end (default 0)")
    p.set_defaults(run=run_shape)

    q = sub.add_parser(
        "params", help="parameters and multiply-adds of the conv kinds, side by side",
        description="Compare standard, pointwise (1x1), depthwise, depthwise-separable and "
        "grouped convolutions from --in to --out channels (weights only).",
    )
    q.add_argument("--in", dest="in_channels", type=int, required=True, metavar="C_IN")
    q.add_argument("--out", dest="out_channels", type=int, required=True, metavar="C_OUT")
    q.add_argument("--kernel-size", dest="kernel", type=int, default=3, metavar="K",
                   help="kernel size (default 3)")
    q.add_argument("--kernel", dest="kernel", type=int, default=3, help=argparse.SUPPRESS)
    q.add_argument("--groups", type=int, default=4, metavar="G",
                   help="groups of the grouped row (default 4)")
    q.add_argument("--size", type=pair, default=(56,), metavar="HxW",
                   help="output size used for the multiply-adds (default 56)")
    q.set_defaults(run=run_params)


def padding_spec(text: str) -> tuple[int, ...] | str:
    """argparse type for ``--padding``: a size (``1`` or ``1x2``), ``same`` or ``valid``.

    >>> padding_spec("Same"), padding_spec("valid"), padding_spec("1x2")
    ('same', (0,), (1, 2))
    """
    word = str(text).strip().lower()
    if word == "same":
        return "same"
    if word == "valid":
        return (0,)
    try:
        return pair(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a padding such as 1 or 1x2, or same / valid, got {text!r}") from None


def _axes(values: tuple[int, ...], name: str) -> tuple[int, int]:
    if any(v < 0 for v in values):
        raise CLIError(f"--{name} must not be negative, got {values}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def run_shape(args: argparse.Namespace) -> int:
    """Print the formula, one filled-in line per axis, and ``output size: ...``."""
    from convlayers import shapes

    if args.stack is not None:
        from convlayers.cli._stack import parse_stack, stack_table

        per_layer = (args.kernel is not None or args.pool or args.transposed or args.stride
                     or args.padding != (0,) or args.dilation != (1,) or args.ceil_mode)
        if per_layer:
            raise CLIError("--stack describes every layer (e.g. 'conv3,s2,p1'); leave out "
                           "--kernel-size, --stride, --padding, --dilation, --pool, "
                           "--transposed and --ceil-mode")
        size = None if args.input is None else _axes(args.input, "input")
        print(stack_table(parse_stack(args.stack), size))
        return 0
    if args.input is None or args.kernel is None:
        raise CLIError("shape needs --input and --kernel-size (or --stack)")
    if args.ceil_mode and not args.pool:
        raise CLIError("--ceil-mode applies to --pool only")
    if args.padding == "same":
        return _same(args)
    if any(args.output_padding) and not args.transposed:
        raise CLIError("--output-padding applies to --transposed only")
    n, k = _axes(args.input, "input"), _axes(args.kernel, "kernel-size")
    s = _axes(args.stride, "stride") if args.stride else (k if args.pool else (1, 1))
    p, d = _axes(args.padding, "padding"), _axes(args.dilation, "dilation")
    op = _axes(args.output_padding, "output-padding")
    kind = "pool" if args.pool else ("conv_transpose" if args.transposed else "conv")
    title = {"pool": "pooling", "conv": "convolution"}.get(kind, "transposed convolution")
    formula = shapes.FORMULAS["pool_ceil" if args.ceil_mode else kind]
    lines = [f"{title}: out = {formula}"]
    square = all(len(v) == 1 for v in (args.input, args.kernel, args.padding, args.dilation,
                                       args.output_padding, args.stride or (1,)))
    rows = []
    for axis in range(1 if square else 2):
        f = shapes.size_formula(kind, n[axis], k[axis], s[axis], p[axis], d[axis],
                                output_padding=op[axis], ceil_mode=args.ceil_mode)
        dropped = f" (window {f.size} would start in the padding: dropped)" if f.dropped else ""
        rows.append((f.text + dropped, f.size))
    return _print_axes(lines, rows, square)


def _print_axes(lines: list[str], rows: list[tuple[str, int]], square: bool) -> int:
    """Print ``lines``, one ``label: text = size`` line per axis and the output size."""
    for axis, (text, out) in enumerate(rows):
        label = "per axis" if square else ("height", "width")[axis]
        lines.append(f"  {label}: {text} = {out}")
    lines.append(f"output size: {'x'.join(str(out) for _, out in rows)}")
    print("\n".join(lines))
    return 0


def run_params(args: argparse.Namespace) -> int:
    """Print the comparison table of :func:`convlayers.shapes.compare_conv_kinds`."""
    from convlayers import shapes

    size = args.size if len(args.size) == 2 else (args.size[0], args.size[0])
    rows = shapes.compare_conv_kinds(args.in_channels, args.out_channels, args.kernel,
                                     size, args.groups)
    kinds = {row.kind: row for row in rows}
    std = kinds["standard"]
    cin, cout, k = args.in_channels, args.out_channels, args.kernel
    print(f"{cin} -> {cout} channels, kernel {k}x{k}, output {size[0]}x{size[1]} "
          f"(weights only, no bias)")
    head = (f"{'layer':<22} {'parameters':>12} {'multiply-adds':>15} {'fewer params':>13} "
            f"{'maps':>8}  what")
    print(head)
    print("-" * len(head))
    # Every full row maps C_IN -> C_OUT, so their ratios compare like with like; the separable
    # row's two parts follow it, indented, without a ratio of their own.
    table = [("standard", "standard", True), ("grouped", "grouped", True),
             ("depthwise-separable", "separable", True),
             ("  depthwise step", "depthwise", False),
             ("  pointwise step", "pointwise", False)]
    for label, kind, full in table:
        row = kinds[kind]
        maps = f"{cin}->{cin}" if kind == "depthwise" else f"{cin}->{cout}"
        ratio = f"{row.ratio_to(std):>12.1f}x" if full else f"{'':>13}"
        what = f"depthwise {k}x{k} then pointwise 1x1" if kind == "separable" else row.description
        print(f"{label:<22} {row.params:>12,} {row.macs:>15,} {ratio} {maps:>8}  {what}")
    return 0


def _same(args: argparse.Namespace) -> int:
    """``shape --padding same``: PyTorch's rule (stride 1; an odd total puts the extra after)."""
    from convlayers import shapes

    if args.pool or args.transposed:
        raise CLIError("--padding same applies to a convolution only (as in PyTorch)")
    if args.stride and any(v != 1 for v in args.stride):
        raise CLIError(f"--padding same needs stride 1 (PyTorch's rule), got --stride "
                       f"{'x'.join(map(str, args.stride))}")
    n, k = _axes(args.input, "input"), _axes(args.kernel, "kernel-size")
    d = _axes(args.dilation, "dilation")
    square = len(args.input) == len(args.kernel) == len(args.dilation) == 1
    lines = ["convolution, padding 'same': before + after = dilation*(kernel - 1), the extra "
             "one after; out = in + before + after - dilation*(kernel - 1)"]
    rows = []
    for axis in range(1 if square else 2):
        before, after = shapes.same_padding(k[axis], d[axis])
        out = shapes.conv_output_size(n[axis], k[axis], 1, (before, after), d[axis])
        rows.append((f"padding {before} before, {after} after; {n[axis]} + {before} + {after} "
                     f"- {d[axis]}*({k[axis]} - 1)", out))
    return _print_axes(lines, rows, square)
