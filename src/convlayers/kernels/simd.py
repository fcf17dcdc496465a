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
covers the whole product: tiles where they fit, tiles over zero-padded copies of the last rows
and columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

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
    """``m = u @ v`` for C-contiguous 2-D ``u (P, K)``, ``v (K, L)``, ``m (P, L)``."""
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
    """Columns ``j_lo .. j_hi`` of ``m (+)= u @ v`` in bands of 8 rows: tiles of three vectors,
    then of one vector, then one vector over a zero-padded copy ``vt`` of the last (fewer than a
    vector's) columns. The last ``P % 8`` rows are a band of their own over zero-padded copies
    of those rows. Not inlined: every kernel calls this one compiled function (per dtype);
    inlined, the unrolled tiles were copied into each call site and first calls compiled for
    about 30 s."""
    P, K = u.shape
    lanes = 16 if u.itemsize == 4 else 8
    width = j_hi - j_lo
    if width <= 0 or P == 0:
        return
    narrow = j_lo + width - width % lanes
    vt = np.zeros((K, lanes if narrow < j_hi else 0), dtype=u.dtype)
    for k in range(vt.shape[0]):
        for t in range(j_hi - narrow):
            vt[k, t] = v[k, narrow + t]
    p_end = P - P % 8
    for p in range(0, p_end, 8):
        _band(u, v, vt, m, p, j_lo, j_hi, accumulate)
    if p_end < P:  # the last rows, padded to a band
        rest = P - p_end
        u8 = np.zeros((8, K), dtype=u.dtype)
        u8[:rest] = u[p_end:]
        m8 = np.zeros((8, m.shape[1]), dtype=m.dtype)
        if accumulate:
            m8[:rest, j_lo:j_hi] = m[p_end:, j_lo:j_hi]
        _band(u8, v, vt, m8, 0, j_lo, j_hi, accumulate)
        m[p_end:, j_lo:j_hi] = m8[:rest, j_lo:j_hi]


@njit(cache=True, fastmath=True)
def _band(u, v, vt, m, p, j_lo, j_hi, accumulate):
    """Rows ``p .. p+8`` of :func:`_tiled`; ``vt`` holds the last partial vector's columns."""
    K = u.shape[1]
    lanes = 16 if u.itemsize == 4 else 8
    width = j_hi - j_lo
    wide = j_lo + width - width % (3 * lanes)
    narrow = j_lo + width - width % lanes
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
    tail = j_hi - narrow
    if tail > 0:
        mt = np.zeros((8, lanes), dtype=m.dtype)
        if accumulate:
            for r in range(8):
                for t in range(tail):
                    mt[r, t] = m[p + r, narrow + t]
        _tile1_add(u[p: p + 8], vt, mt, 0, 0, K)
        for r in range(8):
            for t in range(tail):
                m[p + r, narrow + t] = mt[r, t]
