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
cache while every band of rows streams through it; full tiles where they fit, edge tiles (masked
loads and stores, in place) over the last rows and columns, so it allocates nothing.
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
    32 (AVX2 and narrower: LLVM splits the vectors). ``CONVLAYERS_VECTOR_BYTES=32`` or ``64``
    decides instead (to test one machine's tile geometry on another; use a numba cache of its
    own, as cached kernels keep the geometry they were compiled with)."""
    forced = os.environ.get("CONVLAYERS_VECTOR_BYTES", "")
    if forced in ("32", "64"):
        return int(forced)
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


def _emit_edge_tile(context: Any, builder: Any, signature: Any, args: Any, vectors: int,
                    accumulate: bool) -> Any:
    """The tile of :func:`_emit_tile` for the edges of a product, in place: ``m[p:p+rows,
    keep:j0+C] (+)= u[p:p+rows, k0:k1] @ v[k0:k1, keep:j0+C]`` for ``rows <= TILE_ROWS`` and
    ``j0 <= keep``. Rows past ``rows`` are computed from the last real row and not stored; the
    columns ``j0 .. keep`` are read and written back as they were (so a last, partial vector is
    done as a whole vector ending at the last column, over columns of its own unit). Plain
    loads and stores only: masked ones were 1.5-2x slower on a Zen 1 core."""
    arr_t = signature.args[0]
    ua, va, ma = (context.make_array(t)(context, builder, a)
                  for t, a in zip(signature.args[:3], args[:3], strict=True))
    p, j0, k0, k1, n_rows, keep = args[3:9]
    itemsize = context.get_abi_sizeof(context.get_value_type(arr_t.dtype))
    scalar = ir.FloatType() if itemsize == 4 else ir.DoubleType()
    lanes = (64 if _WIDE else 32) // itemsize
    vec = ir.VectorType(scalar, lanes)
    intp = context.get_value_type(types.intp)
    i32 = ir.IntType(32)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                         f"llvm.fma.v{lanes}{'f32' if itemsize == 4 else 'f64'}")
    ivec = ir.VectorType(intp, lanes)
    zeros = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
    first = builder.shuffle_vector(  # lanes at or past this offset from j0 are written
        builder.insert_element(ir.Constant(ivec, None), builder.sub(keep, j0),
                               ir.Constant(i32, 0)), ir.Constant(ivec, None), zeros)
    written = [builder.icmp_signed(">=", ir.Constant(ivec, [h * lanes + t for t in range(lanes)]),
                                   first) for h in range(vectors)]
    zero_vec = ir.Constant(vec, [0.0] * lanes)

    def row_stride(arr: Any) -> Any:  # in elements
        return builder.sdiv(cgutils.unpack_tuple(builder, arr.strides)[0],
                            ir.Constant(intp, itemsize))

    def at(arr: Any, row: Any, h: int) -> Any:  # vector h at column j0 of element offset row
        return builder.bitcast(builder.gep(arr.data, [builder.add(row, builder.add(
            j0, ir.Constant(intp, h * lanes)))]), vec.as_pointer())

    us, vs, ms = row_stride(ua), row_stride(va), row_stride(ma)
    last = builder.sub(n_rows, ir.Constant(intp, 1))
    rows = [builder.select(builder.icmp_signed("<", ir.Constant(intp, r), n_rows),
                           ir.Constant(intp, r), last) for r in range(TILE_ROWS)]
    m_rows = [builder.mul(builder.add(p, rows[r]), ms) for r in range(TILE_ROWS)]
    accs = [[cgutils.alloca_once(builder, vec) for _ in range(vectors)] for _ in range(TILE_ROWS)]
    for r, row in enumerate(accs):
        for h, acc in enumerate(row):
            builder.store(builder.load(at(ma, m_rows[r], h), align=itemsize) if accumulate
                          else zero_vec, acc)
    u_rows = [builder.add(builder.mul(builder.add(p, rows[r]), us), k0) for r in range(TILE_ROWS)]
    with cgutils.for_range(builder, builder.sub(k1, k0)) as loop:
        k = loop.index
        v_row = builder.mul(builder.add(k, k0), vs)
        xs = [builder.load(at(va, v_row, h), align=itemsize) for h in range(vectors)]
        for r in range(TILE_ROWS):
            a = builder.load(builder.gep(ua.data, [builder.add(u_rows[r], k)]))
            a = builder.insert_element(ir.Constant(vec, None), a, ir.Constant(i32, 0))
            a = builder.shuffle_vector(a, ir.Constant(vec, None), zeros)
            for h in range(vectors):
                builder.store(builder.call(fma, [a, xs[h], builder.load(accs[r][h])]),
                              accs[r][h])
    for r in range(TILE_ROWS):
        with builder.if_then(builder.icmp_signed("<", ir.Constant(intp, r), n_rows)):
            for h in range(vectors):
                ptr = at(ma, m_rows[r], h)
                was = builder.load(ptr, align=itemsize)
                builder.store(builder.select(written[h], builder.load(accs[r][h]), was), ptr,
                              align=itemsize)
    return context.get_dummy_value()


def _make_edge_tile(vectors: int, accumulate: bool) -> Any:
    def typer(typingctx: Any, u: Any, v: Any, m: Any, p: Any, j0: Any, k0: Any, k1: Any,
              rows: Any, keep: Any) -> Any:
        if not _typed(u, v, m):
            return None
        return (types.void(u, v, m, *([types.intp] * 6)),
                lambda context, builder, signature, args: _emit_edge_tile(
                    context, builder, signature, args, vectors, accumulate))
    typer.__name__ = f"edge_tile_{vectors}{'_add' if accumulate else ''}"
    return intrinsic(typer)


def _emit_narrow_tile(context: Any, builder: Any, signature: Any, args: Any,
                      accumulate: bool) -> Any:
    """``m[p:p+rows, j0:j0+cols] (+)= u[p:p+rows, k0:k1] @ v[k0:k1, j0:j0+cols]`` for a product
    narrower than one vector (``cols < lanes``, e.g. a weight gradient with few output
    channels): masked loads and stores, so nothing past the last column is touched; rows past
    ``rows`` are computed from the last real row and not stored. Masked stores are slow on some
    cores, but come once per tile; the loop's masked loads keep the FMAs vectorised."""
    arr_t = signature.args[0]
    ua, va, ma = (context.make_array(t)(context, builder, a)
                  for t, a in zip(signature.args[:3], args[:3], strict=True))
    p, j0, k0, k1, n_rows, n_cols = args[3:9]
    itemsize = context.get_abi_sizeof(context.get_value_type(arr_t.dtype))
    scalar = ir.FloatType() if itemsize == 4 else ir.DoubleType()
    lanes = (64 if _WIDE else 32) // itemsize
    vec = ir.VectorType(scalar, lanes)
    vptr = vec.as_pointer()
    intp = context.get_value_type(types.intp)
    i32 = ir.IntType(32)
    name = f"v{lanes}{'f32' if itemsize == 4 else 'f64'}"
    mask_t = ir.VectorType(ir.IntType(1), lanes)
    load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        vec, [vptr, i32, mask_t, vec]), f"llvm.masked.load.{name}.p0")
    store = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ir.VoidType(), [vec, vptr, i32, mask_t]), f"llvm.masked.store.{name}.p0")
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                         f"llvm.fma.{name}")
    ivec = ir.VectorType(intp, lanes)
    zeros = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
    wanted = builder.shuffle_vector(
        builder.insert_element(ir.Constant(ivec, None), n_cols, ir.Constant(i32, 0)),
        ir.Constant(ivec, None), zeros)
    mask = builder.icmp_signed("<", ir.Constant(ivec, list(range(lanes))), wanted)
    align = ir.Constant(i32, itemsize)
    zero_vec = ir.Constant(vec, [0.0] * lanes)

    def row_stride(arr: Any) -> Any:  # in elements
        return builder.sdiv(cgutils.unpack_tuple(builder, arr.strides)[0],
                            ir.Constant(intp, itemsize))

    def at(arr: Any, row: Any) -> Any:
        return builder.bitcast(builder.gep(arr.data, [builder.add(row, j0)]), vptr)

    us, vs, ms = row_stride(ua), row_stride(va), row_stride(ma)
    last = builder.sub(n_rows, ir.Constant(intp, 1))
    rows = [builder.select(builder.icmp_signed("<", ir.Constant(intp, r), n_rows),
                           ir.Constant(intp, r), last) for r in range(TILE_ROWS)]
    m_rows = [builder.mul(builder.add(p, rows[r]), ms) for r in range(TILE_ROWS)]
    accs = [cgutils.alloca_once(builder, vec) for _ in range(TILE_ROWS)]
    for r, acc in enumerate(accs):
        builder.store(builder.call(load, [at(ma, m_rows[r]), align, mask, zero_vec])
                      if accumulate else zero_vec, acc)
    u_rows = [builder.add(builder.mul(builder.add(p, rows[r]), us), k0) for r in range(TILE_ROWS)]
    with cgutils.for_range(builder, builder.sub(k1, k0)) as loop:
        k = loop.index
        x = builder.call(load, [at(va, builder.mul(builder.add(k, k0), vs)), align, mask,
                                zero_vec])
        for r in range(TILE_ROWS):
            a = builder.load(builder.gep(ua.data, [builder.add(u_rows[r], k)]))
            a = builder.insert_element(ir.Constant(vec, None), a, ir.Constant(i32, 0))
            a = builder.shuffle_vector(a, ir.Constant(vec, None), zeros)
            builder.store(builder.call(fma, [a, x, builder.load(accs[r])]), accs[r])
    for r in range(TILE_ROWS):
        with builder.if_then(builder.icmp_signed("<", ir.Constant(intp, r), n_rows)):
            builder.call(store, [builder.load(accs[r]), at(ma, m_rows[r]), align, mask])
    return context.get_dummy_value()


def _make_narrow_tile(accumulate: bool) -> Any:
    def typer(typingctx: Any, u: Any, v: Any, m: Any, p: Any, j0: Any, k0: Any, k1: Any,
              rows: Any, cols: Any) -> Any:
        if not _typed(u, v, m):
            return None
        return (types.void(u, v, m, *([types.intp] * 6)),
                lambda context, builder, signature, args: _emit_narrow_tile(
                    context, builder, signature, args, accumulate))
    typer.__name__ = f"narrow_tile{'_add' if accumulate else ''}"
    return intrinsic(typer)


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
_edge_wide, _edge_one = _make_edge_tile(TILE_VECTORS, False), _make_edge_tile(1, False)
_edge_wide_add, _edge_one_add = _make_edge_tile(TILE_VECTORS, True), _make_edge_tile(1, True)
_narrow, _narrow_add = _make_narrow_tile(False), _make_narrow_tile(True)


# Typed as plain int64 and bool, not as literals: a literal 0 or True passed to _tiled
# compiled it once more per spelling (three times per dtype), ~5 s each on a first call.
_LEFT, _WRITE, _ADD = np.int64(0), np.bool_(False), np.bool_(True)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled(u, v, m):
    """``m = u @ v`` for C-contiguous 2-D ``u (P, K)``, ``v (K, L)``, ``m (P, L)``."""
    _tiled(u, v, m, _LEFT, v.shape[1], _WRITE)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled_add(u, v, m):
    """``m += u @ v``, as :func:`gemm_tiled`."""
    _tiled(u, v, m, _LEFT, v.shape[1], _ADD)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled_cols(u, v, m, j0, j1):
    """``m[:, j0:j1] = u @ v[:, j0:j1]``, as :func:`gemm_tiled` (the other columns untouched)."""
    _tiled(u, v, m, j0, j1, _WRITE)


@njit(cache=True, fastmath=True)
def _tiled(u, v, m, j_lo, j_hi, accumulate):
    """Columns ``j_lo .. j_hi`` of ``m (+)= u @ v``: blocks of ``NC`` columns, slabs of ``KC``
    of the inner dimension, bands of ``TILE_ROWS`` rows, tiles of ``TILE_VECTORS`` vectors then
    of one vector; the last (fewer than a vector's) columns as the vector ending at ``j_hi``,
    the last ``P % TILE_ROWS`` rows as a band of edge tiles. Nothing is copied or allocated.
    Fewer columns than a vector in all: masked tiles (:func:`_emit_narrow_tile`). Not inlined:
    every kernel calls this one compiled function (per dtype); inlined, the unrolled tiles were
    copied into each call site and first calls compiled for about 30 s."""
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
    if width < lanes:  # narrower than a vector: masked tiles, in the tiles' order of sums
        for k0 in range(0, K, KC):
            k1 = min(K, k0 + KC)
            for p in range(0, P, R):
                if accumulate or k0 > 0:
                    _narrow_add(u, v, m, p, j_lo, k0, k1, min(R, P - p), width)
                else:
                    _narrow(u, v, m, p, j_lo, k0, k1, min(R, P - p), width)
        return
    narrow = j_lo + width - width % lanes
    for c0 in range(j_lo, j_hi, NC):
        c1 = min(j_hi, c0 + NC)
        for k0 in range(0, K, KC):
            k1 = min(K, k0 + KC)
            add = accumulate or k0 > 0
            for p in range(0, P, R):
                _band(u, v, m, p, min(R, P - p), c0, c1, narrow, k0, k1, add)


@njit(cache=True, fastmath=True)
def _band(u, v, m, p, rows, c0, c1, narrow, k0, k1, add):
    """Rows ``p .. p+rows`` (``rows <= TILE_ROWS``), columns ``c0 .. c1``, inner slab ``k0 ..
    k1`` of :func:`_tiled`; the columns past ``narrow`` (fewer than a vector) as the vector
    ending at ``c1``, its columns before ``narrow`` kept."""
    R = TILE_ROWS
    lanes = (64 if _WIDE else 32) // u.itemsize
    step = TILE_VECTORS * lanes
    end = min(c1, narrow)
    wide = c0 + (end - c0) - (end - c0) % step if end > c0 else c0
    for j0 in range(c0, wide, step):
        if rows < R:
            if add:
                _edge_wide_add(u, v, m, p, j0, k0, k1, rows, j0)
            else:
                _edge_wide(u, v, m, p, j0, k0, k1, rows, j0)
        elif add:
            _tile_wide_add(u, v, m, p, j0, k0, k1)
        else:
            _tile_wide(u, v, m, p, j0, k0, k1)
    for j0 in range(wide, end, lanes):
        if rows < R:
            if add:
                _edge_one_add(u, v, m, p, j0, k0, k1, rows, j0)
            else:
                _edge_one(u, v, m, p, j0, k0, k1, rows, j0)
        elif add:
            _tile_one_add(u, v, m, p, j0, k0, k1)
        else:
            _tile_one(u, v, m, p, j0, k0, k1)
    if c1 > end:
        if add:
            _edge_one_add(u, v, m, p, c1 - lanes, k0, k1, rows, end)
        else:
            _edge_one(u, v, m, p, c1 - lanes, k0, k1, rows, end)
