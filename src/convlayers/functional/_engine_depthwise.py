"""The engine's depthwise strategies (``depthwise-flat``, ``-planar``, ``-rows``,
``-channels-last``): direct kernels.

Forward and both gradients in one pass, by the numba kernels of
:mod:`convlayers.kernels.depthwise`; ``-rows`` reads the borders by bounds, so it also serves
when a non-finite weight must not meet the padding. ``-channels-last`` is a forward for small
maps (:mod:`convlayers.kernels.depthwise_nhwc`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from convlayers import config
from convlayers.functional._compiled import _numba_threads, kernels
from convlayers.functional._engine_shared import _bias_arg, _finite, _quiet, aligned_empty
from convlayers.functional.plan import Geometry


def _planar(g: Geometry) -> tuple[int, int, int, int]:
    """The planar depthwise kernels' geometry ``(rows, S, length, block)``."""
    from convlayers.kernels.depthwise import planar_geometry

    return planar_geometry((g.ho, g.wo), (g.kh, g.kw), (g.sh, g.sw), (g.dh, g.dw))


def _planar_parts(planes: int) -> int:
    """Parallel units of the planar kernels: a few per thread, so a busy core can be helped."""
    return max(1, min(planes, 8 * _numba_threads()))


def _depthwise_taps(w: np.ndarray) -> np.ndarray:
    c_out, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c_out, kh, kw))


def _fwd_depthwise_channels_last(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                                g: Geometry) -> np.ndarray:
    k = kernels()
    out = np.empty((g.n, g.c_out, g.ho, g.wo), dtype=x.dtype)
    threads = _numba_threads()
    padded, result, cb = k.depthwise_nhwc.channels_last_shapes(
        threads, g.c_in, (g.h, g.w), (g.pt, g.pl), (g.ho, g.wo), (g.kh, g.kw), (g.sh, g.sw),
        (g.dh, g.dw))
    taps, shift = channels_last_taps(w.reshape(g.c_out, g.kh, g.kw), bias, cb, x.dtype)
    k.depthwise_nhwc.depthwise_channels_last(x, taps, shift, g.sh, g.sw, g.dh, g.dw, g.pt,
                                             g.pl, threads, aligned_empty(padded, x.dtype),
                                             aligned_empty(result, x.dtype), out)
    return out


@_quiet
def _bwd_depthwise_channels_last(x: np.ndarray, gy: np.ndarray, w: np.ndarray,
                                 g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Both gradients of a depthwise convolution (no multiplier) on small maps, channels last
    (:func:`convlayers.kernels.depthwise_nhwc.depthwise_channels_last_backward`)."""
    k = kernels()
    threads = _numba_threads()
    padded, result, cb = k.depthwise_nhwc.channels_last_shapes(
        threads, g.c_in, (g.h, g.w), (g.pt, g.pl), (g.ho, g.wo), (g.kh, g.kw), (g.sh, g.sw),
        (g.dh, g.dw))
    taps, _ = channels_last_taps(w.reshape(g.c_out, g.kh, g.kw), None, cb, x.dtype)
    gx = np.empty(x.shape, dtype=x.dtype)
    part = np.empty((threads, g.kh, g.kw, cb), dtype=x.dtype)
    k.depthwise_nhwc.depthwise_channels_last_backward(
        x, np.ascontiguousarray(gy), taps, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
        aligned_empty(padded, x.dtype), aligned_empty(result, x.dtype),
        aligned_empty(padded, x.dtype), aligned_empty((threads, g.h, g.w, padded[3]), x.dtype),
        gx, part)
    if config.engine.check_values and not _finite(part):
        # the taps that fall on the block's zero padding meet an inf or NaN output gradient
        # there (0 * inf): the row kernels read by bounds
        part = k.depthwise.depthwise_weight_grad(x, gy, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw,
                                                 g.pt, g.pl).transpose(0, 2, 3, 1)
        gw = part.sum(axis=0)[:, :, : g.c_out]
    else:
        gw = _fold_channels(part.sum(axis=0), g.c_out)
    gw = gw.transpose(2, 0, 1)
    return gx, np.ascontiguousarray(gw).astype(x.dtype).reshape(g.c_out, 1, g.kh, g.kw)


def _fold_channels(taps: np.ndarray, channels: int) -> np.ndarray:
    """``(kh, kw, channels)``: the sums over ``taps (kh, kw, L)``'s last axis of the indices
    that are one channel modulo ``channels`` (the channels-last kernels' repeated channels)."""
    total = taps[:, :, :channels].copy()
    for start in range(channels, taps.shape[2], channels):
        part = taps[:, :, start:start + channels]
        total[:, :, : part.shape[2]] += part
    return total


def channels_last_taps(w: np.ndarray, bias: np.ndarray | None, cb: int,
                       dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(taps (kh, kw, cb), bias (cb,))`` of the channels-last kernel for weights ``w (C, kh,
    kw)``: channels last, repeated (index ``j`` holds channel ``j % C``) up to ``cb``."""
    repeat = np.arange(cb) % w.shape[0]
    taps = np.ascontiguousarray(w.transpose(1, 2, 0)[:, :, repeat], dtype=dtype)
    shift = np.zeros(cb, dtype) if bias is None else np.asarray(bias, dtype)[repeat]
    return taps, shift


def _fwd_depthwise_flat(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                        g: Geometry) -> np.ndarray:
    k = kernels()
    out = np.empty((g.n, g.c_out, g.ho, g.wo), dtype=x.dtype)
    masks = k.depthwise.flat_masks((g.ho, g.wo), g.w, g.kw, g.dw, g.pl)
    k.depthwise.flat_forward(x.reshape(g.n, g.c_in, g.h * g.w), _depthwise_taps(w),
                             _bias_arg(bias, x.dtype), g.w, g.dh, g.dw, g.pt, g.pl, masks,
                             _planar_parts(g.n * g.c_out), out.reshape(g.n, g.c_out, -1))
    return out


def _fwd_depthwise_planar(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                          g: Geometry) -> np.ndarray:
    k = kernels()
    out = np.empty((g.n, g.c_out, g.ho, g.wo), dtype=x.dtype)
    k.depthwise.planar_forward(x, _depthwise_taps(w), _bias_arg(bias, x.dtype), g.sh, g.sw,
                               g.dh, g.dw, g.pt, g.pl, *_planar(g), _planar_parts(g.n * g.c_in),
                               out)
    return out


def _fwd_depthwise_rows(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                        g: Geometry) -> np.ndarray:
    k = kernels()
    out = np.empty((g.n, g.c_out, g.ho, g.wo), dtype=x.dtype)
    k.depthwise.depthwise_forward(x, _depthwise_taps(w), _bias_arg(bias, x.dtype), g.sh, g.sw,
                                  g.dh, g.dw, g.pt, g.pl, out)
    return out


def _bwd_depthwise(kind: str) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    @_quiet
    def backward(x: np.ndarray, gy: np.ndarray, w: np.ndarray,
                 g: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """Both gradients of a depthwise convolution of the unpadded ``x`` by the ``kind``
        kernels in one pass."""
        k = kernels()
        wd = _depthwise_taps(w)
        gx = np.empty(x.shape, dtype=x.dtype)
        if kind == "flat":
            part = k.depthwise.flat_backward(
                x.reshape(g.n, g.c_in, g.h * g.w), gy.reshape(g.n, g.c_out, g.ho * g.wo), wd,
                g.w, g.dh, g.dw, g.pt, g.pl, k.depthwise.flat_masks((g.ho, g.wo), g.w, g.kw,
                                                                    g.dw, g.pl),
                _planar_parts(g.n * g.c_in), True, True, gx.reshape(g.n, g.c_in, g.h * g.w))
        elif kind == "planar":
            part = k.depthwise.planar_backward(x, gy, wd, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
                                               *_planar(g), _planar_parts(g.n * g.c_in), True,
                                               True, gx)
            if config.engine.check_values and not _finite(part):
                # the dot products run over whole flat planes, padding and row ends included,
                # where an inf input meets a zero: the row kernels read by bounds
                part = k.depthwise.depthwise_weight_grad(x, gy, g.kh, g.kw, g.sh, g.sw, g.dh,
                                                         g.dw, g.pt, g.pl)
        else:
            k.depthwise.depthwise_input_grad(gy, wd, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, gx)
            part = k.depthwise.depthwise_weight_grad(x, gy, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw,
                                                     g.pt, g.pl)
        return gx, part.sum(axis=0).astype(x.dtype).reshape(g.c_out, 1, g.kh, g.kw)
    return backward


def _gx_depthwise_planar(gy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    k = kernels()
    gx = np.empty((g.n, g.c_in, g.h, g.w), dtype=gy.dtype)
    k.depthwise.planar_backward(gx, gy, _depthwise_taps(w), g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
                                *_planar(g), _planar_parts(g.n * g.c_in), True, False, gx)
    return gx


def _gx_depthwise_rows(gy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    k = kernels()
    gx = np.empty((g.n, g.c_in, g.h, g.w), dtype=gy.dtype)
    k.depthwise.depthwise_input_grad(gy, _depthwise_taps(w), g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
                                     gx)
    return gx


@_quiet
def _gw_depthwise_planar(x: np.ndarray, gy: np.ndarray, g: Geometry) -> np.ndarray:
    k = kernels()
    part = k.depthwise.planar_backward(x, gy, np.zeros((g.c_out, g.kh, g.kw), dtype=x.dtype),
                                       g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, *_planar(g),
                                       _planar_parts(g.n * g.c_in), False, True,
                                       np.empty((0, 0, 0, 0), dtype=x.dtype))
    if config.engine.check_values and not _finite(part):  # see _bwd_depthwise
        return _gw_depthwise_rows(x, gy, g)
    return part.sum(axis=0).astype(x.dtype).reshape(g.c_out, 1, g.kh, g.kw)


@_quiet
def _gw_depthwise_rows(x: np.ndarray, gy: np.ndarray, g: Geometry) -> np.ndarray:
    k = kernels()
    part = k.depthwise.depthwise_weight_grad(x, gy, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt,
                                             g.pl)
    return part.sum(axis=0).astype(x.dtype).reshape(g.c_out, 1, g.kh, g.kw)
