"""A register-tiled GEMM micro-kernel, written as LLVM vector code through numba intrinsics.

numba has no vector types, so the loops of :mod:`convlayers.kernels.gemm` keep their
accumulators in memory: every step of ``k`` loads and stores four rows of the output, and they
reach about 150 GFLOP/s per core here. The tile below keeps an ``8 x 3`` block of vectors
(8 output rows by 48 float32 columns) in 24 registers for the whole ``k`` loop; each step loads
three vectors of the right operand, broadcasts eight scalars of the left one and issues 24 fused
multiply-adds, the shape of the micro-kernels of BLIS and oneDNN. Measured on one core of the
2-core AVX-512 machine: 250-290 GFLOP/s against the loops' 140-190, on the products of a
lowered 3x3 convolution (256 x 1152 @ 1152 x 196) and of Winograd (64 x 64 @ 64 x 224).

The vectors are 512 bits (16 float32 or 8 float64); LLVM splits them on machines with narrower
registers, so the code is correct everywhere and fast where AVX-512 exists. :func:`gemm_tiled`
covers the whole product: tiles where they fit, the loops of :mod:`~convlayers.kernels.gemm`
for the remaining rows and columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from convlayers.kernels.gemm import gemm, gemm_add, gemm_cols

__all__ = ["TILE_ROWS", "gemm_tiled", "gemm_tiled_add", "gemm_tiled_cols"]

#: Rows of the output a tile covers.
TILE_ROWS = 8


def _tile_codegen(vectors: int, accumulate: bool) -> Any:
    """Code generator of a tile of ``TILE_ROWS`` rows by ``vectors`` vectors."""
    return lambda context, builder, signature, args: _emit_tile(context, builder, signature,
                                                                 args, vectors, accumulate)


def _emit_tile(context: Any, builder: Any, signature: Any, args: Any, vectors: int,
               accumulate: bool) -> Any:
    """``m[p:p+R, j0:j0+C] (+)= u[p:p+R, :K] @ v[:K, j0:j0+C]`` for C-contiguous 2-D arrays
    (``+=`` when ``accumulate``)."""
    arr_t = signature.args[0]
    ua, va, ma = (context.make_array(t)(context, builder, a)
                  for t, a in zip(signature.args[:3], args[:3], strict=True))
    p, j0, k_end = args[3], args[4], args[5]
    itemsize = context.get_abi_sizeof(context.get_value_type(arr_t.dtype))
    scalar = ir.FloatType() if itemsize == 4 else ir.DoubleType()
    lanes = 64 // itemsize
    vec = ir.VectorType(scalar, lanes)
    intp = context.get_value_type(types.intp)
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec] * 3),
        f"llvm.fma.v{lanes}{'f32' if itemsize == 4 else 'f64'}")
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)

    def rows(arr: Any) -> Any:  # row stride in elements
        return builder.sdiv(cgutils.unpack_tuple(builder, arr.strides)[0],
                            ir.Constant(intp, itemsize))

    us, vs, ms = rows(ua), rows(va), rows(ma)
    accs = [[cgutils.alloca_once(builder, vec) for _ in range(vectors)]
            for _ in range(TILE_ROWS)]
    for r, row in enumerate(accs):
        out_row = builder.add(builder.mul(builder.add(p, ir.Constant(intp, r)), ms), j0)
        for h, acc in enumerate(row):
            if accumulate:
                ptr = builder.gep(ma.data, [builder.add(out_row, ir.Constant(intp, h * lanes))])
                start = builder.load(builder.bitcast(ptr, vec.as_pointer()), align=itemsize)
            else:
                start = ir.Constant(vec, [0.0] * lanes)
            builder.store(start, acc)
    u_rows = [builder.mul(builder.add(p, ir.Constant(intp, r)), us) for r in range(TILE_ROWS)]
    with cgutils.for_range(builder, k_end) as loop:
        k = loop.index
        base = builder.add(builder.mul(k, vs), j0)
        xs = [builder.load(builder.bitcast(
                  builder.gep(va.data, [builder.add(base, ir.Constant(intp, h * lanes))]),
                  vec.as_pointer()), align=itemsize)
              for h in range(vectors)]
        for r in range(TILE_ROWS):
            a = builder.load(builder.gep(ua.data, [builder.add(u_rows[r], k)]))
            a = builder.insert_element(ir.Constant(vec, None), a, ir.Constant(ir.IntType(32), 0))
            a = builder.shuffle_vector(a, ir.Constant(vec, None), zeros)
            for h in range(vectors):
                builder.store(builder.call(fma, [a, xs[h], builder.load(accs[r][h])]),
                              accs[r][h])
    for r in range(TILE_ROWS):
        out_row = builder.add(builder.mul(builder.add(p, ir.Constant(intp, r)), ms), j0)
        for h in range(vectors):
            ptr = builder.gep(ma.data, [builder.add(out_row, ir.Constant(intp, h * lanes))])
            builder.store(builder.load(accs[r][h]), builder.bitcast(ptr, vec.as_pointer()),
                          align=itemsize)
    return context.get_dummy_value()


def _typed(u: Any, v: Any, m: Any) -> bool:
    """Only C-contiguous 2-D float arrays of one dtype: the generated code assumes it."""
    return all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C"
               and a.dtype in (types.float32, types.float64) and a.dtype == u.dtype
               for a in (u, v, m))


def _make_tile(vectors: int, accumulate: bool) -> Any:
    def typer(typingctx: Any, u: Any, v: Any, m: Any, p: Any, j0: Any, k_end: Any) -> Any:
        if not _typed(u, v, m):
            return None
        return (types.void(u, v, m, types.intp, types.intp, types.intp),
                _tile_codegen(vectors, accumulate))
    typer.__name__ = f"tile_{vectors}{'_add' if accumulate else ''}"
    return intrinsic(typer)


_tile3, _tile1 = _make_tile(3, False), _make_tile(1, False)
_tile3_add, _tile1_add = _make_tile(3, True), _make_tile(1, True)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled(u, v, m):
    """``m = u @ v`` for C-contiguous 2-D ``u (P, K)``, ``v (K, L)``, ``m (P, L)`` (as
    :func:`~convlayers.kernels.gemm.gemm`): 8-row tiles of three vectors, then of one vector,
    then one vector over a zero-padded copy of the last (fewer than a vector's) columns; the
    last ``P % 8`` rows by the plain loops."""
    _tiled(u, v, m, 0, v.shape[1], False)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled_add(u, v, m):
    """``m += u @ v``, as :func:`gemm_tiled`."""
    _tiled(u, v, m, 0, v.shape[1], True)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled_cols(u, v, m, j0, j1):
    """``m[:, j0:j1] = u @ v[:, j0:j1]``, as :func:`gemm_tiled` (the other columns untouched)."""
    _tiled(u, v, m, j0, j1, False)


@njit(cache=True, fastmath=True)
def _tiled(u, v, m, j_lo, j_hi, accumulate):
    # Not inlined: every kernel calls this one compiled function (per dtype), where inlining
    # copied 24 unrolled tiles into each call site and made first calls compile for ~30 s.
    P, K = u.shape
    lanes = 16 if u.itemsize == 4 else 8
    p_end = P - P % 8
    width = j_hi - j_lo
    if p_end > 0 and width > 0:
        wide = j_lo + width - width % (3 * lanes)
        narrow = j_lo + width - width % lanes
        for p in range(0, p_end, 8):
            for j0 in range(j_lo, wide, 3 * lanes):
                if accumulate:
                    _tile3_add(u, v, m, p, j0, K)
                else:
                    _tile3(u, v, m, p, j0, K)
            for j0 in range(wide, narrow, lanes):
                if accumulate:
                    _tile1_add(u, v, m, p, j0, K)
                else:
                    _tile1(u, v, m, p, j0, K)
        if narrow < j_hi:
            tail = j_hi - narrow
            vt = np.zeros((K, lanes), dtype=u.dtype)
            for k in range(K):
                for t in range(tail):
                    vt[k, t] = v[k, narrow + t]
            mt = np.zeros((p_end, lanes), dtype=u.dtype)
            if accumulate:
                for p in range(p_end):
                    for t in range(tail):
                        mt[p, t] = m[p, narrow + t]
            for p in range(0, p_end, 8):
                _tile1_add(u, vt, mt, p, 0, K)
            for p in range(p_end):
                for t in range(tail):
                    m[p, narrow + t] = mt[p, t]
    if p_end < P and width > 0:
        if accumulate:
            gemm_add(u[p_end:], v, m[p_end:])  # only ever whole rows (j_lo = 0, j_hi = L)
        elif j_lo == 0 and j_hi == v.shape[1]:
            gemm(u[p_end:], v, m[p_end:])
        else:
            gemm_cols(u[p_end:], v, m[p_end:], j_lo, j_hi)
