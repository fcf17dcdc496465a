"""A register-tiled GEMM micro-kernel, written as LLVM vector code through numba intrinsics.

numba has no vector types, so plain loops keep their accumulators in memory: every step of
``k`` loads and stores rows of the output. The tile below keeps a block of ``TILE_ROWS`` output
rows by ``TILE_VECTORS`` vectors in registers for the whole ``k`` loop; each step loads the
vectors of the right operand, broadcasts ``TILE_ROWS`` scalars of the left one and issues
``TILE_ROWS * TILE_VECTORS`` fused multiply-adds, the shape of the micro-kernels of BLIS and
oneDNN.

The tile is sized for the machine numba compiles for (the host, unless ``NUMBA_CPU_NAME`` /
``NUMBA_CPU_FEATURES`` say otherwise): with AVX-512 (32 vector registers) 8 rows by 3 vectors of
16 float32 (24 accumulators); otherwise (AVX2's 16 registers) 6 rows by 2 vectors of 8 float32
(12 accumulators). The AVX-512 tile compiled for an AVX2 machine spills its accumulators and ran
2.5x slower than the 6x2 one there (measured on a 2-core Zen 1); the vectors are split by LLVM
where narrower, so the code is correct everywhere.

:func:`gemm_tiled` covers the whole product, blocked like BLIS: blocks of ``NC`` columns, and
within them slabs of ``KC`` of the inner dimension, so the right operand's slab stays in the L2
cache while every band of rows streams through it; full tiles where they fit, tiles over
zero-padded copies of the last rows and columns.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["KC", "NC", "TILE_ROWS", "TILE_VECTORS", "gemm_tiled", "gemm_tiled_add",
           "gemm_tiled_cols", "vector_bytes"]


def vector_bytes() -> int:
    """Bytes of one vector register on the machine numba compiles for: 64 with AVX-512F, else
    32 (AVX2 and narrower: LLVM splits the vectors)."""
    features = os.environ.get("NUMBA_CPU_FEATURES", "")
    if not features and os.environ.get("NUMBA_CPU_NAME", "host") not in ("", "host"):
        return 32  # a named generic target: assume no AVX-512
    if not features:
        import llvmlite.binding as ll

        host = ll.get_host_cpu_features()
        return 64 if host.get("avx512f", False) else 32
    return 64 if "+avx512f" in features.split(",") else 32


_WIDE = vector_bytes() == 64
#: Rows of the output one tile covers.
TILE_ROWS = 8 if _WIDE else 6
#: Vectors (of ``vector_bytes()``) per tile row.
TILE_VECTORS = 3 if _WIDE else 2
#: Inner-dimension slab of one pass over the bands (the right operand's ``KC x NC`` block stays
#: in L2).
KC = 256
#: Columns of one block of the blocked product.
NC = 192 if _WIDE else 256


def _tile_codegen(rows: int, vectors: int, accumulate: bool) -> Any:
    """Code generator of a tile of ``rows`` rows by ``vectors`` vectors."""
    return lambda context, builder, signature, args: _emit_tile(context, builder, signature,
                                                                 args, rows, vectors, accumulate)


def _emit_tile(context: Any, builder: Any, signature: Any, args: Any, rows: int, vectors: int,
               accumulate: bool) -> Any:
    """``m[p:p+R, j0:j0+C] (+)= u[p:p+R, k0:k1] @ v[k0:k1, j0:j0+C]`` for C-contiguous 2-D
    arrays (``+=`` when ``accumulate``)."""
    arr_t = signature.args[0]
    ua, va, ma = (context.make_array(t)(context, builder, a)
                  for t, a in zip(signature.args[:3], args[:3], strict=True))
    p, j0, k0, k1 = args[3], args[4], args[5], args[6]
    itemsize = context.get_abi_sizeof(context.get_value_type(arr_t.dtype))
    scalar = ir.FloatType() if itemsize == 4 else ir.DoubleType()
    lanes = (64 if _WIDE else 32) // itemsize
    vec = ir.VectorType(scalar, lanes)
    intp = context.get_value_type(types.intp)
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec] * 3),
        f"llvm.fma.v{lanes}{'f32' if itemsize == 4 else 'f64'}")
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)

    def row_stride(arr: Any) -> Any:  # in elements
        return builder.sdiv(cgutils.unpack_tuple(builder, arr.strides)[0],
                            ir.Constant(intp, itemsize))

    us, vs, ms = row_stride(ua), row_stride(va), row_stride(ma)
    accs = [[cgutils.alloca_once(builder, vec) for _ in range(vectors)] for _ in range(rows)]
    for r, row in enumerate(accs):
        out_row = builder.add(builder.mul(builder.add(p, ir.Constant(intp, r)), ms), j0)
        for h, acc in enumerate(row):
            if accumulate:
                ptr = builder.gep(ma.data, [builder.add(out_row, ir.Constant(intp, h * lanes))])
                start = builder.load(builder.bitcast(ptr, vec.as_pointer()), align=itemsize)
            else:
                start = ir.Constant(vec, [0.0] * lanes)
            builder.store(start, acc)
    u_rows = [builder.add(builder.mul(builder.add(p, ir.Constant(intp, r)), us), k0)
              for r in range(rows)]
    with cgutils.for_range(builder, builder.sub(k1, k0)) as loop:
        k = loop.index
        base = builder.add(builder.mul(builder.add(k, k0), vs), j0)
        xs = [builder.load(builder.bitcast(
                  builder.gep(va.data, [builder.add(base, ir.Constant(intp, h * lanes))]),
                  vec.as_pointer()), align=itemsize)
              for h in range(vectors)]
        for r in range(rows):
            a = builder.load(builder.gep(ua.data, [builder.add(u_rows[r], k)]))
            a = builder.insert_element(ir.Constant(vec, None), a, ir.Constant(ir.IntType(32), 0))
            a = builder.shuffle_vector(a, ir.Constant(vec, None), zeros)
            for h in range(vectors):
                builder.store(builder.call(fma, [a, xs[h], builder.load(accs[r][h])]),
                              accs[r][h])
    for r in range(rows):
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
    def typer(typingctx: Any, u: Any, v: Any, m: Any, p: Any, j0: Any, k0: Any, k1: Any) -> Any:
        if not _typed(u, v, m):
            return None
        return (types.void(u, v, m, types.intp, types.intp, types.intp, types.intp),
                _tile_codegen(TILE_ROWS, vectors, accumulate))
    typer.__name__ = f"tile_{TILE_ROWS}x{vectors}{'_add' if accumulate else ''}"
    return intrinsic(typer)


_tile_wide, _tile_one = _make_tile(TILE_VECTORS, False), _make_tile(1, False)
_tile_wide_add, _tile_one_add = _make_tile(TILE_VECTORS, True), _make_tile(1, True)


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
    """Columns ``j_lo .. j_hi`` of ``m (+)= u @ v``: blocks of ``NC`` columns, slabs of ``KC``
    of the inner dimension, bands of ``TILE_ROWS`` rows, tiles of ``TILE_VECTORS`` vectors then
    of one vector, then one vector over a zero-padded copy ``vt`` of the last (fewer than a
    vector's) columns. The last ``P % TILE_ROWS`` rows are a band of their own over zero-padded
    copies of those rows. Not inlined: every kernel calls this one compiled function (per
    dtype); inlined, the unrolled tiles were copied into each call site and first calls
    compiled for about 30 s."""
    P, K = u.shape
    R = TILE_ROWS
    lanes = (64 if _WIDE else 32) // u.itemsize
    width = j_hi - j_lo
    if width <= 0 or P == 0:
        return
    if K == 0:
        if not accumulate:
            for p in range(P):
                for j in range(j_lo, j_hi):
                    m[p, j] = 0
        return
    narrow = j_lo + width - width % lanes
    vt = np.zeros((K, lanes if narrow < j_hi else 0), dtype=u.dtype)
    for k in range(vt.shape[0]):
        for t in range(j_hi - narrow):
            vt[k, t] = v[k, narrow + t]
    p_end = P - P % R
    rest = P - p_end
    ur = np.zeros((R if rest else 0, K), dtype=u.dtype)
    mr = np.zeros((R if rest else 0, m.shape[1]), dtype=m.dtype)
    if rest:
        ur[:rest] = u[p_end:]
        if accumulate:
            mr[:rest, j_lo:j_hi] = m[p_end:, j_lo:j_hi]
    for c0 in range(j_lo, j_hi, NC):
        c1 = min(j_hi, c0 + NC)
        for k0 in range(0, K, KC):
            k1 = min(K, k0 + KC)
            add = accumulate or k0 > 0
            for p in range(0, p_end, R):
                _band(u, v, vt, m, p, c0, c1, narrow, j_hi, k0, k1, add)
            if rest:
                _band(ur, v, vt, mr, 0, c0, c1, narrow, j_hi, k0, k1, add)
    if rest:
        m[p_end:, j_lo:j_hi] = mr[:rest, j_lo:j_hi]


@njit(cache=True, fastmath=True)
def _band(u, v, vt, m, p, c0, c1, narrow, j_hi, k0, k1, add):
    """Rows ``p .. p+TILE_ROWS``, columns ``c0 .. c1``, inner slab ``k0 .. k1`` of
    :func:`_tiled`; ``vt`` holds the columns past ``narrow`` (fewer than a vector) when ``c1``
    reaches them."""
    R = TILE_ROWS
    lanes = (64 if _WIDE else 32) // u.itemsize
    step = TILE_VECTORS * lanes
    end = min(c1, narrow)
    wide = c0 + (end - c0) - (end - c0) % step if end > c0 else c0
    for j0 in range(c0, wide, step):
        if add:
            _tile_wide_add(u, v, m, p, j0, k0, k1)
        else:
            _tile_wide(u, v, m, p, j0, k0, k1)
    for j0 in range(wide, end, lanes):
        if add:
            _tile_one_add(u, v, m, p, j0, k0, k1)
        else:
            _tile_one(u, v, m, p, j0, k0, k1)
    tail = j_hi - narrow
    if c1 == j_hi and tail > 0:
        mt = np.zeros((R, lanes), dtype=m.dtype)
        if add:
            for r in range(R):
                for t in range(tail):
                    mt[r, t] = m[p + r, narrow + t]
        _tile_one_add(u[p: p + R], vt, mt, 0, 0, k0, k1)
        for r in range(R):
            for t in range(tail):
                m[p + r, narrow + t] = mt[r, t]
