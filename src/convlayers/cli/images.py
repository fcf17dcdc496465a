"""``convlayers gallery`` and ``convlayers filter``: classic filters on your own photos."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from convlayers.cli._common import (
    CLIError,
    add_progress_flag,
    image_files,
    matrix,
    output_dir,
    output_file,
    progress,
    progress_enabled,
    read_picture,
)
from convlayers.cli._dask import add_dask_flags, wants_dask

#: The ``filter --scale`` rules (``to_uint8``).
SCALES = ("auto", "clip", "stretch", "abs", "signed", "percentile")


def register(sub: Any) -> None:
    """Add the ``gallery`` and ``filter`` commands."""
    g = sub.add_parser(
        "gallery", help="a photo next to its responses to classic filters, as one picture",
        description="Draw the original and each filter's response (default: the six classic "
        "filters vertical, horizontal, sobel_x, sobel_y, blur, laplacian) in a grid.",
    )
    g.add_argument("image", metavar="IMAGE", help="photo to filter")
    g.add_argument("-o", "--output", required=True, metavar="PNG", help="picture to write")
    g.add_argument("--filters", nargs="+", metavar="NAME", help="filter names (see 'filter')")
    g.add_argument("--color", action="store_true",
                   help="filter the color channels instead of the luminance (color panels)")
    g.add_argument("--display", choices=("auto", "abs", "signed", "percentile", "minmax"),
                   default="auto",
                   help="how a response is shown: abs (|response|, edges bright on black), "
                   "signed (with a colorbar), percentile (1st..99th), minmax; auto: abs for "
                   "edge filters, percentile for the others (default)")
    g.set_defaults(run=run_gallery)

    f = sub.add_parser(
        "filter", help="apply named filters or your own kernel to images or folders of images",
        description="Convolve each IMAGE (a folder means every image in it) with each filter "
        "and write the results. One image and one filter: OUT may be a file name; otherwise "
        "OUT is a folder that receives STEM_FILTER.png files.",
        epilog="Filter names: " + _names() + ". A kernel spec that starts with '-' needs "
        "'=': --kernel=-1,0,1;-2,0,2;-1,0,1",
    )
    f.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    which = f.add_mutually_exclusive_group(required=True)
    which.add_argument("--filter", dest="filters", nargs="+", metavar="NAME",
                       help="one or more filter names")
    which.add_argument("--kernel", metavar="SPEC",
                       help="your own kernel: rows separated by ';', e.g. '1,0,-1;2,0,-2;1,0,-1'")
    f.add_argument("-o", "--output", required=True, metavar="OUT", help="file or folder")
    f.add_argument("--gray", action="store_true", help="filter the luminance only")
    f.add_argument("--boundary", choices=("symm", "fill", "wrap"), default="symm",
                   help="edge handling, as scipy.signal.convolve2d (default symm)")
    f.add_argument("--scale", choices=SCALES, default="auto",
                   help="to 8 bits: clip to 0..255, stretch min..max, abs (|response|, edges "
                   "bright on black), signed (0 is mid-grey), percentile (1st..99th), or auto "
                   "(keep values already in 0..255, else abs for edge filters and percentile "
                   "for the others); default auto")
    add_dask_flags(f)
    add_progress_flag(f)
    f.set_defaults(run=run_filter)


def _names() -> str:
    from convlayers.filters import FILTERS

    return ", ".join(sorted(FILTERS))


def _check_names(names: list[str]) -> None:
    from convlayers.filters import FILTERS

    unknown = [n for n in names if n not in FILTERS]
    if unknown:
        raise CLIError(f"unknown filter {unknown[0]!r}; choose from {_names()}")


def _read(path: Path, gray: bool) -> np.ndarray:
    img = read_picture(path, "L" if gray else None)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]  # filter the color, not the transparency
    elif img.ndim == 3 and img.shape[2] == 2:
        img = img[:, :, 0]  # gray + alpha
    return img


def to_uint8(response: np.ndarray, scale: str, kernel: Any = None) -> np.ndarray:
    """A filter response as 8-bit pixels by the ``--scale`` rule.

    ``clip`` keeps 0..255; ``stretch`` maps min..max; ``abs``, ``signed`` and ``percentile``
    are the displays of :mod:`convlayers.viz.display`; ``auto`` keeps values already in
    0..255, else shows ``|response|`` for an edge ``kernel`` (weights summing to 0) and the
    1st..99th percentiles otherwise.

    >>> to_uint8(np.array([[-2.0, 0.0, 2.0]]), "auto")
    array([[  0, 128, 255]], dtype=uint8)
    >>> to_uint8(np.array([[-2.0, 0.0, 2.0]]), "auto", kernel=[[1, 0, -1]])
    array([[255,   0, 255]], dtype=uint8)
    >>> to_uint8(np.array([[-2.0, 100.4, 300.0]]), "clip")
    array([[  0, 100, 255]], dtype=uint8)
    """
    from convlayers.viz.display import display_mode, to_unit

    lo, hi = float(response.min()), float(response.max())
    if scale == "clip" or (scale == "auto" and lo >= 0 and hi <= 255):
        return np.clip(np.rint(response), 0, 255).astype(np.uint8)
    if scale != "stretch":
        mode = display_mode(scale, kernel)
        return np.rint(to_unit(response, mode) * 255.0).astype(np.uint8)
    if hi == lo:
        return np.zeros(response.shape, dtype=np.uint8)
    return np.rint((response - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def run_gallery(args: argparse.Namespace) -> int:
    """Write :func:`convlayers.viz.filter_gallery` of one image."""
    from convlayers.viz import SEED_FILTERS, filter_gallery, save_figure

    names = args.filters or list(SEED_FILTERS)
    _check_names(names)
    target = output_file(args.output, "figure", "-o/--output")
    image = _read(Path(args.image), gray=False)
    save_figure(filter_gallery(image, names, gray=not args.color, display=args.display),
                target)
    print(f"wrote {target}")
    return 0


def _filter_on_dask(args: argparse.Namespace, jobs: list[tuple[Path, str, Any]],
                    targets: list[Path]) -> None:
    """The same filtering, chunk by chunk on Dask; a .zarr output stays float and chunked."""
    from convlayers import dask as cd
    from convlayers.cli._dask import compute, dask_session
    from convlayers.io import write_image

    with dask_session(args) as client:
        for (src, _, kernel), target in zip(jobs, targets, strict=True):
            if src.suffix.lower() == ".zarr":
                image = cd.open_image(src, chunks=args.chunks)
            else:
                import dask.array as da

                pixels = _read(src, args.gray)
                side = args.chunks or "auto"
                image = da.from_array(pixels, chunks=(side, side, *pixels.shape[2:]))
            response = cd.apply_filter(image, kernel, boundary=args.boundary)
            if target.suffix.lower() == ".zarr":
                cd.save(response, target, overwrite=True)  # prepare_output: absent or a store
                continue
            result = compute(response, client, progress_enabled(args))
            write_image(target, to_uint8(result, args.scale, kernel))


def _check_kernel_range(kernel: Any) -> None:
    """Refuse, before any work, a kernel whose responses on 8-bit pixels would overflow."""
    if isinstance(kernel, str):
        return
    total = float(np.abs(np.asarray(kernel, dtype=np.float64)).sum())
    if not total * 255.0 <= float(np.finfo(np.float64).max):
        raise CLIError(f"--kernel values are too large: responses on 8-bit pixels would exceed "
                       f"float64's range ({float(np.finfo(np.float64).max):.3g})")


def _response(image: np.ndarray, kernel: Any, boundary: str) -> np.ndarray:
    """The filter response as float32, filled strip by strip (bounded scratch memory), so a
    large photo needs its 8-bit pixels plus a float32 response, not float64 copies of both."""
    from convlayers import limits
    from convlayers.filters.apply import filter_strips

    limits.check_elements(image.shape, np.float32, "the filter response")
    response = np.empty(image.shape, np.float32)
    for row, strip in filter_strips(image, kernel, boundary=boundary):
        response[row : row + len(strip)] = strip
    return response


def _pixels(response: np.ndarray, scale: str, kernel: Any) -> np.ndarray:
    """:func:`to_uint8` of the whole response; where its rule is per pixel (clip, or auto on
    values already in 0..255) it runs a block of rows at a time, so no float copy of the
    response is made."""
    lo, hi = float(response.min()), float(response.max())
    if not (scale == "clip" or (scale == "auto" and lo >= 0 and hi <= 255)):
        return to_uint8(response, scale, kernel)
    out = np.empty(response.shape, np.uint8)
    step = max(1, (1 << 22) // max(1, response[0].size))
    for row in range(0, len(response), step):
        out[row : row + step] = to_uint8(response[row : row + step], "clip")
    return out


def run_filter(args: argparse.Namespace) -> int:
    """Filter every image with every filter; write 8-bit images atomically."""
    from convlayers.io import write_image

    kernels: list[tuple[str, Any]]
    if args.kernel is not None:
        kernels = [("kernel", np.array(matrix(args.kernel, "kernel")))]
    else:
        _check_names(args.filters)
        kernels = [(n, n) for n in args.filters]
    for _, k in kernels:
        _check_kernel_range(k)
    sources = image_files(args.images)
    out = Path(args.output)
    zarr_out = out.suffix.lower() == ".zarr"
    as_file = zarr_out or (bool(out.suffix) and not out.is_dir())  # else a folder
    if as_file:
        if len(sources) * len(kernels) != 1:
            raise CLIError(f"-o/--output {str(out)!r} names one file, but {len(sources)} "
                           f"image(s) x {len(kernels)} filter(s) need a folder (a name without "
                           "a suffix)")
        targets = [output_file(out, "zarr" if zarr_out else "image", "-o/--output")]
    else:
        folder = output_dir(out, "-o/--output")
        targets = [folder / f"{src.stem}_{name}.png" for src in sources for name, _ in kernels]
    jobs = [(src, name, k) for src in sources for name, k in kernels]
    if (wants_dask(args) or zarr_out
            or any(src.suffix.lower() == ".zarr" for src in sources)):
        _filter_on_dask(args, jobs, targets)
        print(f"wrote {len(targets)} image(s) to {targets[0] if as_file else out}")
        return 0
    for (src, _, kernel), target in progress(zip(jobs, targets, strict=True),
                                             progress_enabled(args), total=len(jobs),
                                             desc="filtering"):
        write_image(target, _pixels(_response(_read(src, args.gray), kernel, args.boundary),
                                    args.scale, kernel))
    where = targets[0] if as_file else out
    print(f"wrote {len(targets)} image(s) to {where}")
    return 0
