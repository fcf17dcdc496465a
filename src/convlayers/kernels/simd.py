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
loads and stores, in place) over the last rows and columns, so it allocates nothing. A band of
at most ``SMALL_ROWS`` rows (a product's last rows, or all of a short one) runs on half-height
tiles with twice the vectors (two rows compute three there, not six).

:func:`gemm_indirect` and :func:`gemm_indirect_left_add` take one operand as a flat array and a
table of row offsets: its rows are windows of the array, which may overlap. That is the implicit
GEMM of a convolution (:mod:`convlayers.kernels.implicit`): the windows of a padded input slab
are the im2col columns, read in place instead of copied.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from convlayers.kernels._typed import FALSE, TRUE, ZERO

__all__ = ["CONV_PANEL_BYTES", "CONV_ROWS", "CONV_VECTORS", "KC", "NC", "TALL_ROWS",
           "TALL_THREE_ROWS", "TALL_TWO_ROWS", "TILE_ROWS", "TILE_VECTORS", "VECTOR_BYTES",
           "band_columns", "band_pixels", "conv_band", "conv_band_taps", "conv_band_taps_onto", "conv_rows",
           "conv_slab", "conv_strip",
           "few_columns", "gemm_few", "gemm_indirect", "gemm_indirect_left_add",
           "gemm_indirect_part", "gemm_tiled", "gemm_tiled_add", "gemm_tiled_cols",
           "gemm_tiled_inner", "interleave3", "masked_store", "pack_conv_weights", "taps_broadcast",
           "taps_row", "taps_vector", "transpose_block", "transpose_part", "transpose_vectors",
           "vector_bytes"]


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


#: :func:`vector_bytes` of this process (read once: it asks LLVM for the host's features).
VECTOR_BYTES = vector_bytes()
_WIDE = VECTOR_BYTES == 64
#: Rows of the output one tile covers.
TILE_ROWS = 8 if _WIDE else 6
#: Vectors (of ``vector_bytes()``) per tile row.
TILE_VECTORS = 3 if _WIDE else 2
#: Inner-dimension slab of one pass over the bands (the right operand's ``KC x NC`` block stays
#: in L2).
KC = 256
#: Rows ahead of the one in use that the tiles prefetch from a 2-D right operand (a prefetch
#: never faults, so past the operand's end is harmless).
PREFETCH_ROWS = 16
#: Rows ahead that a direct convolution's tiles prefetch from their packed weights (4, 8, 16
#: and 32 tried on the compiled ResNets: 8 best, 6-10% faster than none at batch 1).
CONV_PREFETCH_ROWS = 8
#: Columns of one block of the blocked product.
NC = 192 if _WIDE else 256
#: Rows of the left operand one pass over a block's slivers takes (its ``MC x KC`` block stays
#: in L2 beside the right operand's).
MC = 144
#: Vectors of columns in one sliver: the right operand's ``KC x sliver`` stays in L1 while
#: every band of an ``MC`` block of rows runs its tiles on it.
SLIVER_VECTORS = TILE_VECTORS
#: Most columns :func:`gemm_few` takes.
FEW_COLUMNS = 4
#: Inner-dimension chunk of :func:`gemm_few` (a column's copy stays in L1).
FEW_KC = 1024
#: Rows from which products of two to ``FEW_COLUMNS`` columns take :func:`gemm_few`.
FEW_MIN_ROWS = 16


#: The three kinds of tile. ``full``: ``TILE_ROWS`` rows by whole vectors at ``j0``. ``edge``:
#: the first ``rows`` rows only (the others computed from the last real row, not stored), and
#: the columns ``j0 .. keep`` written back as they were, so a last, partial vector is done as
#: the whole vector ending at the product's last column (plain loads and stores: masked ones
#: were 1.5-2x slower on a Zen 1 core). ``narrow``: a product narrower than one vector, its
#: ``cols`` columns read and written by masked loads and stores (nothing past them is touched).
_KINDS = ("full", "edge", "narrow")


def masked_store(builder: Any, mstore: Any, value: Any, ptr: Any, align: Any, mask: Any) -> None:
    """``llvm.masked.store`` of ``value`` to ``ptr`` under ``mask`` (``align`` an i32
    constant), as a plain store when every lane of the mask is set. AMD's Zen 2 and Zen 3
    run a masked store of 256 bits in about 12 cycles against one for a plain store (measured
    on Zen 3, a loop of each); the masks of the channels-last kernels are whole but for a
    last, partial vector, so a test of the mask's bits per store costs less than what it
    saves (a masked load runs at a plain one's rate and stays)."""
    lanes = mask.type.count
    bits = builder.bitcast(mask, ir.IntType(lanes))
    whole = builder.icmp_unsigned("==", bits, ir.Constant(ir.IntType(lanes), (1 << lanes) - 1))
    with builder.if_else(whole) as (plain, part):
        with plain:
            builder.store(value, ptr, align=align.constant)
        with part:
            builder.call(mstore, [value, ptr, align, mask])


def _emit_tile(context: Any, builder: Any, signature: Any, args: Any, kind: str, vectors: int,
               accumulate: bool, tile_rows: int = TILE_ROWS, taps: bool = False) -> Any:
    """``m[p:p+R, j0:j0+C] (+)= u[p:p+R, k0:k1] @ v[k0:k1, j0:j0+C]`` for C-contiguous 2-D
    arrays (``+=`` when ``accumulate``), with ``R = tile_rows`` accumulators of ``vectors``
    vectors kept in registers over the whole ``k`` loop; ``kind`` as in :data:`_KINDS` (the
    ``edge`` and ``narrow`` tiles take ``rows`` and ``keep`` or ``cols`` after ``k1``).

    A 1-D operand is *indirect*: with a 1-D ``v``, its row ``k`` starts at ``v[offs[k]]``; with
    a 1-D ``u``, its row ``p`` starts at ``u[offs[p]]`` (``offs``, the fourth argument, is
    ignored when both are 2-D). Overlapping windows of one flat array then serve as the rows:
    the implicit GEMM of :mod:`convlayers.kernels.implicit`.

    ``taps`` (an indirect ``u``; ``edge`` and ``narrow`` kinds): six more arguments,
    ``toffs, ntaps, vrows, vfirst, vcol, add`` (``add`` replaces ``accumulate``, at run time:
    one tile serves the first slab of input channels and those that add onto it). The ``k``
    loop runs once per tap ``t < ntaps``, its left rows moved by ``toffs[t]`` and its right
    rows those of ``v`` from
    ``vfirst + t * vrows``, read from column ``vcol`` of ``v`` (a packed strip of the weights,
    while ``j0`` is the output's column): a direct convolution over a padded channels-last
    input, each tap a window of pixels' channels, the accumulators kept across all taps
    (XNNPACK's indirect GEMM, with offsets for pointers)."""
    arr_t = signature.args[0]
    ua, va, ma, oa = (context.make_array(t)(context, builder, a)
                      for t, a in zip(signature.args[:4], args[:4], strict=True))
    indirect = signature.args[1].ndim == 1
    indirect_left = signature.args[0].ndim == 1
    p, j0, k0, k1 = args[4:8]
    itemsize = context.get_abi_sizeof(context.get_value_type(arr_t.dtype))
    lanes = (64 if _WIDE else 32) // itemsize
    vec = ir.VectorType(ir.FloatType() if itemsize == 4 else ir.DoubleType(), lanes)
    vptr = vec.as_pointer()
    intp, i32 = context.get_value_type(types.intp), ir.IntType(32)
    name = f"v{lanes}{'f32' if itemsize == 4 else 'f64'}"
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                         f"llvm.fma.{name}")
    zeros = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
    i8p = ir.IntType(8).as_pointer()
    i32_0 = ir.Constant(i32, 0)
    prefetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
    zero_vec = ir.Constant(vec, [0.0] * lanes)
    align = ir.Constant(i32, itemsize)

    def const(value: int) -> Any:
        return ir.Constant(intp, value)

    def splat(value: Any) -> Any:  # an intp as a vector of intp
        ivec = ir.VectorType(intp, lanes)
        return builder.shuffle_vector(builder.insert_element(ir.Constant(ivec, None), value,
                                                             ir.Constant(i32, 0)),
                                      ir.Constant(ivec, None), zeros)

    def lane_ids(h: int) -> Any:  # column offsets from j0 of vector h's lanes
        return ir.Constant(ir.VectorType(intp, lanes), [h * lanes + t for t in range(lanes)])

    def row_stride(arr: Any) -> Any:  # in elements
        return builder.sdiv(cgutils.unpack_tuple(builder, arr.strides)[0], const(itemsize))

    def at(arr: Any, row: Any, h: int) -> Any:  # vector h at column j0 of element offset row
        return builder.bitcast(builder.gep(arr.data, [builder.add(row, builder.add(
            j0, const(h * lanes)))]), vptr)

    ms = row_stride(ma)
    us = const(0) if indirect_left else row_stride(ua)
    # a strided left operand (a transposed weight): its element (p, k) at p*us + k*uk
    strided_left = not indirect_left and signature.args[0].layout != "C"
    uk = (builder.sdiv(cgutils.unpack_tuple(builder, ua.strides)[1], const(itemsize))
          if strided_left else const(1))
    vs = const(0) if indirect else row_stride(va)
    if kind == "full":
        n_rows = const(tile_rows)
        rows = [const(r) for r in range(tile_rows)]
    else:
        n_rows = args[8]
        last = builder.sub(n_rows, const(1))
        rows = [builder.select(builder.icmp_signed("<", const(r), n_rows), const(r), last)
                for r in range(tile_rows)]
    if kind == "narrow":
        load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            vec, [vptr, i32, ir.VectorType(ir.IntType(1), lanes), vec]),
            f"llvm.masked.load.{name}.p0")
        store = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [vec, vptr, i32, ir.VectorType(ir.IntType(1), lanes)]),
            f"llvm.masked.store.{name}.p0")
        cols = args[9]
        # each vector's mask as the integer (1 << n) - 1, n its columns (clamped to 0..lanes),
        # made once: compares of vectors of lane numbers (64-bit) were redone at every k
        bits = ir.IntType(lanes)
        masks = []
        for h in range(vectors):
            n = builder.sub(cols, const(h * lanes))
            n = builder.select(builder.icmp_signed("<", n, const(0)), const(0), n)
            n = builder.select(builder.icmp_signed(">", n, const(lanes)), const(lanes), n)
            wide = builder.sub(builder.shl(ir.Constant(ir.IntType(64), 1),
                                           builder.zext(n, ir.IntType(64))
                                           if n.type.width < 64 else n),
                               ir.Constant(ir.IntType(64), 1))
            masks.append(builder.bitcast(builder.trunc(wide, bits),
                                         ir.VectorType(ir.IntType(1), lanes)))

        def read(ptr: Any, h: int) -> Any:
            return builder.call(load, [ptr, align, masks[h], zero_vec])
    else:
        def read(ptr: Any, h: int) -> Any:
            return builder.load(ptr, align=itemsize)

    m_rows = [builder.mul(builder.add(p, rows[r]), ms) for r in range(tile_rows)]
    accs = [[cgutils.alloca_once(builder, vec) for _ in range(vectors)] for _ in range(tile_rows)]
    # a conv tile's 16th argument says at run time whether it adds onto ``m``
    adds = builder.icmp_signed("!=", args[15], const(0)) if taps else None
    for r, row in enumerate(accs):
        for h, acc in enumerate(row):
            builder.store(read(at(ma, m_rows[r], h), h) if accumulate else zero_vec, acc)
    if adds is not None:  # a branch, not a select: a select read the output at every tile
        with builder.if_then(adds):
            for r, row in enumerate(accs):
                for h, acc in enumerate(row):
                    builder.store(read(at(ma, m_rows[r], h), h), acc)
    if taps:
        # the lines the epilogue will write (the output) and read (the residual; the output
        # again when there is none) are fetched while the sums run: ResNet-50's 64 -> 256 1x1
        # with its residual on 56x56, 0.55-0.59 -> 0.49-0.51 ms (2 threads; whole models
        # within their noise)
        ra = context.make_array(signature.args[17])(context, builder, args[17])
        for r in range(tile_rows):
            for h in range(vectors):
                for data, rw in ((ma.data, 1), (ra.data, 0)):
                    ptr = builder.gep(data, [builder.add(m_rows[r], builder.add(
                        j0, const(h * lanes)))])
                    builder.call(prefetch, [builder.bitcast(ptr, i8p), ir.Constant(i32, rw),
                                            ir.Constant(i32, 3), ir.Constant(i32, 1)])
    # an indirect left operand's rows (a conv tile's always are): element offsets of column k0
    u_rows = ([builder.add(builder.load(builder.gep(oa.data, [builder.add(p, rows[r])])), k0)
               for r in range(tile_rows)] if indirect_left else [])
    if taps:
        toa = context.make_array(signature.args[10])(context, builder, args[10])
        ntaps, vrows, vfirst, vcol = args[11:15]
        with cgutils.for_range(builder, ntaps) as tap_loop:
            t = tap_loop.index
            shift = builder.load(builder.gep(toa.data, [t]))
            first = builder.add(builder.add(builder.mul(t, vrows), k0), vfirst)
            tap_rows = [builder.add(row, shift) for row in u_rows]
            with cgutils.for_range(builder, builder.sub(k1, k0)) as loop:
                k = loop.index
                v_at = builder.add(builder.mul(builder.add(k, first), vs), vcol)
                for h in range(vectors):
                    builder.call(prefetch, [builder.bitcast(builder.gep(va.data, [builder.add(
                        v_at, builder.add(builder.mul(vs, const(CONV_PREFETCH_ROWS)),
                                          const(h * lanes)))]), i8p),
                        i32_0, ir.Constant(i32, 3), ir.Constant(i32, 1)])
                xs = [read(builder.bitcast(builder.gep(va.data, [builder.add(
                    v_at, const(h * lanes))]), vptr), h) for h in range(vectors)]
                for r in range(tile_rows):
                    a = builder.load(builder.gep(ua.data, [builder.add(tap_rows[r], k)]))
                    a = builder.insert_element(ir.Constant(vec, None), a, ir.Constant(i32, 0))
                    a = builder.shuffle_vector(a, ir.Constant(vec, None), zeros)
                    for h in range(vectors):
                        builder.store(builder.call(fma, [a, xs[h], builder.load(accs[r][h])]),
                                      accs[r][h])
    else:
        # pointers carried from one k to the next, the rows as fixed offsets from the left
        # one: indices recomputed from k at every step kept more integers live than a core has
        # registers, and the spills (accumulators included) held the wide tiles to a third of
        # the FMA rate (36 GF/s against 110 on one Zen 5 core)
        if indirect_left:
            u_cur = cgutils.alloca_once_value(builder, ua.data)
            u_offs = u_rows
        else:
            u_cur = cgutils.alloca_once_value(builder, builder.gep(ua.data, [builder.add(
                builder.mul(p, us), builder.mul(k0, uk))]))
            u_offs = [builder.mul(rows[r], us) for r in range(tile_rows)]
        if indirect:
            o_cur = cgutils.alloca_once_value(builder, builder.gep(oa.data, [k0]))
        else:
            v_cur = cgutils.alloca_once_value(builder, builder.gep(va.data, [builder.add(
                builder.mul(k0, vs), j0)]))
            ahead = builder.mul(vs, const(PREFETCH_ROWS))
        with cgutils.for_range(builder, builder.sub(k1, k0)):
            u_ptr = builder.load(u_cur)
            if indirect:
                o_ptr = builder.load(o_cur)
                v_ptr = builder.gep(va.data, [builder.add(builder.load(o_ptr), j0)])
                builder.store(builder.gep(o_ptr, [const(1)]), o_cur)
            else:
                v_ptr = builder.load(v_cur)
                # the row PREFETCH_ROWS ahead: a product with few rows streams its right operand
                # once, a column strip of many rows, more streams than the hardware follows
                for h in range(vectors):
                    builder.call(prefetch, [builder.bitcast(builder.gep(v_ptr, [builder.add(
                        ahead, const(h * lanes))]), i8p), i32_0, ir.Constant(i32, 3),
                        ir.Constant(i32, 1)])
                builder.store(builder.gep(v_ptr, [vs]), v_cur)
            xs = [read(builder.bitcast(builder.gep(v_ptr, [const(h * lanes)]), vptr), h)
                  for h in range(vectors)]
            for r in range(tile_rows):
                a = builder.load(builder.gep(u_ptr, [u_offs[r]]))
                a = builder.insert_element(ir.Constant(vec, None), a, ir.Constant(i32, 0))
                a = builder.shuffle_vector(a, ir.Constant(vec, None), zeros)
                for h in range(vectors):
                    builder.store(builder.call(fma, [a, xs[h], builder.load(accs[r][h])]),
                                  accs[r][h])
            builder.store(builder.gep(u_ptr, [uk]), u_cur)
    # a conv tile's columns are all its own (its callers pass ``keep == j0``): no column of
    # an edge tile is kept, and its stores read nothing first
    keeps = kind == "edge" and not taps
    if keeps:
        written = [builder.icmp_signed(">=", lane_ids(h), splat(builder.sub(args[9], j0)))
                   for h in range(vectors)]

    def stores(finish: Any) -> None:
        for r in range(tile_rows):
            with builder.if_then(builder.icmp_signed("<", const(r), n_rows)):
                for h in range(vectors):
                    ptr, value = at(ma, m_rows[r], h), builder.load(accs[r][h])
                    if finish is not None:
                        value = finish(value, r, h)
                    if kind == "narrow":
                        masked_store(builder, store, value, ptr, align, masks[h])
                        continue
                    if keeps:
                        value = builder.select(written[h], value,
                                               builder.load(ptr, align=itemsize))
                    builder.store(value, ptr, align=itemsize)

    if not taps:
        stores(None)
        return context.get_dummy_value()
    # the epilogue's stores emitted twice, with and without the residual: one branch a tile
    with_res, finish = _tile_epilogue(context, builder, signature, args, vectors, read, ma,
                                      vec, const, m_rows, j0)
    with builder.if_else(with_res) as (residual, plain):
        with residual:
            stores(lambda value, r, h: finish(value, r, h, True))
        with plain:
            stores(lambda value, r, h: finish(value, r, h, False))
    return context.get_dummy_value()


def _tile_epilogue(context: Any, builder: Any, signature: Any, args: Any, vectors: int,
                   read: Any, ma: Any, vec: Any, const: Any, m_rows: list[Any],
                   j0: Any) -> tuple[Any, Any]:
    """A conv tile's epilogue on its registers, before they are stored: ``finish`` (argument
    18) below 0 stores the sums as they are (a slab that later ones add onto); else its low
    three bits are an activation code (1 ReLU, 2 ReLU6, else none) and bit 3 says whether a
    residual is added: ``act(sum + bias[j0:] (+ res[row, j0:]))``, with ``bias`` (argument 16)
    and ``res`` (argument 17, shaped and strided like the output).

    Returns ``(with_res, f)``: whether the residual is added (an i1), and ``f(value, row, h,
    residual)`` for the store loop emitted once with the residual and once without. The
    activation is a clamp to ``[low, high]`` (``-inf, inf`` for none or an unfinished slab,
    ``0, inf`` for ReLU, ``0, 6`` for ReLU6) picked once a tile, as compares and selects so
    NaN stays NaN as in torch; an unfinished slab adds -0.0 for the bias (each sum unchanged,
    signed zeros included). A compare, select and branch per activation and vector before ran
    a third of a 6 x 16 tile's instructions on 16 input channels."""
    ba = context.make_array(signature.args[16])(context, builder, args[16])
    ra = context.make_array(signature.args[17])(context, builder, args[17])
    code = args[18]
    done = builder.icmp_signed(">=", code, const(0))
    act = builder.and_(code, const(7))
    with_res = builder.and_(done, builder.icmp_signed("!=", builder.and_(code, const(8)),
                                                      const(0)))
    lanes = vec.count

    def splat(value: float) -> Any:
        return ir.Constant(vec, [value] * lanes)

    clamps = builder.and_(done, builder.or_(builder.icmp_signed("==", act, const(1)),
                                            builder.icmp_signed("==", act, const(2))))
    low = builder.select(clamps, splat(0.0), splat(float("-inf")))
    high = builder.select(builder.and_(done, builder.icmp_signed("==", act, const(2))),
                          splat(6.0), splat(float("inf")))
    biases = []
    for h in range(vectors):
        b_ptr = builder.bitcast(builder.gep(ba.data, [builder.add(j0, const(h * lanes))]),
                                vec.as_pointer())
        biases.append(builder.select(done, read(b_ptr, h), splat(-0.0)))

    def finish(value: Any, r: int, h: int, residual: bool) -> Any:
        total = builder.fadd(value, biases[h])
        if residual:
            res_ptr = builder.bitcast(builder.gep(ra.data, [builder.add(m_rows[r], builder.add(
                j0, const(h * lanes)))]), vec.as_pointer())
            total = builder.fadd(total, read(res_ptr, h))
        total = builder.select(builder.fcmp_ordered("<", total, low), low, total)
        return builder.select(builder.fcmp_ordered(">", total, high), high, total)

    return with_res, finish


def _typed(u: Any, v: Any, m: Any, offs: Any) -> bool:
    """Only C-contiguous float arrays of one dtype, 2-D (``u`` or ``v``, not both, may be 1-D:
    indirect), and ``offs`` a 1-D int64 array: the generated code assumes it. A 2-D ``u`` may
    also be strided both ways (a transposed view: each tile reads its rows' ``k``-th elements
    one stride apart)."""
    arrays = all(isinstance(a, types.Array)
                 and (a.layout == "C" or (a is u and a.ndim == 2))
                 and a.dtype in (types.float32, types.float64) and a.dtype == u.dtype
                 for a in (u, v, m))
    return (arrays and m.ndim == 2 and (u.ndim, v.ndim) in ((2, 2), (1, 2), (2, 1))
            and isinstance(offs, types.Array) and offs.ndim == 1 and offs.dtype == types.int64)


def _make_tile(kind: str, vectors: int, accumulate: bool, tile_rows: int = TILE_ROWS) -> Any:
    """The intrinsic ``tile(u, v, m, offs, p, j0, k0, k1)`` (``full``) or ``tile(u, v, m, offs,
    p, j0, k0, k1, rows, keep_or_cols)`` (``edge``, ``narrow``)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return _emit_tile(context, builder, signature, args, kind, vectors, accumulate, tile_rows)

    def full(typingctx: Any, u: Any, v: Any, m: Any, offs: Any, p: Any, j0: Any, k0: Any,
             k1: Any) -> Any:
        return ((types.void(u, v, m, offs, *([types.intp] * 4)), codegen)
                if _typed(u, v, m, offs) else None)

    def ragged(typingctx: Any, u: Any, v: Any, m: Any, offs: Any, p: Any, j0: Any, k0: Any,
               k1: Any, rows: Any, keep_or_cols: Any) -> Any:
        return ((types.void(u, v, m, offs, *([types.intp] * 6)), codegen)
                if _typed(u, v, m, offs) else None)

    typer = full if kind == "full" else ragged
    typer.__name__ = f"{kind}_tile_{tile_rows}x{vectors}{'_add' if accumulate else ''}"
    return intrinsic(typer)


#: Pixels by vectors of output channels of a direct convolution's tile (:func:`conv_band`):
#: with AVX-512, 6 by 4 (24 accumulators, 64 float32 channels: a ResNet's widths are multiples
#: of 64, which 8 by 3 tiles covered with a third of one-vector tiles).
CONV_ROWS, CONV_VECTORS = (6, 4) if _WIDE else (TILE_ROWS, TILE_VECTORS)


def _make_conv_tile(kind: str, vectors: int, tile_rows: int = CONV_ROWS) -> Any:
    """The intrinsic ``tile(u, v, m, offs, p, j0, k0, k1, rows, keep_or_cols, toffs, ntaps,
    vrows, vfirst, vcol, add, bias, res, finish)`` (``edge`` or ``narrow``) of
    :func:`_emit_tile` with ``taps``: ``u`` 1-D; ``add`` nonzero: onto ``m`` (a later slab of
    input channels), else over it; ``bias``, ``res``, ``finish``: the epilogue of
    :func:`_tile_epilogue`."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return _emit_tile(context, builder, signature, args, kind, vectors, False, tile_rows,
                          taps=True)

    def typer(typingctx: Any, u: Any, v: Any, m: Any, offs: Any, p: Any, j0: Any, k0: Any,
              k1: Any, rows: Any, keep_or_cols: Any, toffs: Any, ntaps: Any, vrows: Any,
              vfirst: Any, vcol: Any, add: Any, bias: Any, res: Any, finish: Any) -> Any:
        if not (_typed(u, v, m, offs) and u.ndim == 1 and isinstance(toffs, types.Array)
                and toffs.ndim == 1 and toffs.dtype == types.int64
                and isinstance(bias, types.Array) and bias.ndim == 1 and bias.layout == "C"
                and bias.dtype == u.dtype and isinstance(res, types.Array) and res == m):
            return None
        return types.void(u, v, m, offs, *([types.intp] * 6), toffs,
                          *([types.intp] * 5), bias, res, types.intp), codegen

    typer.__name__ = f"conv_{kind}_tile_{tile_rows}x{vectors}"
    return intrinsic(typer)


_tile_wide, _tile_one = _make_tile("full", TILE_VECTORS, False), _make_tile("full", 1, False)
_tile_wide_add, _tile_one_add = _make_tile("full", TILE_VECTORS, True), _make_tile("full", 1, True)
_edge_wide, _edge_one = _make_tile("edge", TILE_VECTORS, False), _make_tile("edge", 1, False)
_edge_wide_add, _edge_one_add = _make_tile("edge", TILE_VECTORS, True), _make_tile("edge", 1, True)
_narrow, _narrow_add = _make_tile("narrow", 1, False), _make_tile("narrow", 1, True)
_narrow_wide = _make_tile("narrow", TILE_VECTORS, False)
_narrow_wide_add = _make_tile("narrow", TILE_VECTORS, True)
#: A band of at most half a tile's rows (a product's last ``P % TILE_ROWS`` rows, or all of a
#: short one: 8 output channels are a band of 6 and one of 2) runs on tiles of half the rows
#: and twice the vectors: as many accumulators, without computing rows it drops.
SMALL_ROWS, SMALL_VECTORS = TILE_ROWS // 2, 2 * TILE_VECTORS
_small = _make_tile("edge", SMALL_VECTORS, False, SMALL_ROWS)
_small_add = _make_tile("edge", SMALL_VECTORS, True, SMALL_ROWS)


# Typed as plain int64 and bool, not as literals (:mod:`convlayers.kernels._typed`): a literal
# 0 or True passed to _tiled compiled it once more per spelling, ~5 s each on a first call.
_LEFT, _WRITE, _ADD = ZERO, FALSE, TRUE
#: The row offsets of a direct (2-D) right operand: none, its rows are its own.
_DIRECT = np.zeros(1, dtype=np.int64)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled(u, v, m):
    """``m = u @ v`` for C-contiguous 2-D ``v (K, L)``, ``m (P, L)`` and 2-D ``u (P, K)``,
    C-contiguous or a strided view (a transposed weight)."""
    _tiled(u, v, m, _DIRECT, _LEFT, v.shape[1], _LEFT, u.shape[1], _WRITE)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled_add(u, v, m):
    """``m += u @ v``, as :func:`gemm_tiled`."""
    _tiled(u, v, m, _DIRECT, _LEFT, v.shape[1], _LEFT, u.shape[1], _ADD)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled_cols(u, v, m, j0, j1):
    """``m[:, j0:j1] = u @ v[:, j0:j1]``, as :func:`gemm_tiled` (the other columns untouched)."""
    _tiled(u, v, m, _DIRECT, j0, j1, _LEFT, u.shape[1], _WRITE)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled_cols_add(u, v, m, j0, j1):
    """``m[:, j0:j1] += u @ v[:, j0:j1]``, as :func:`gemm_tiled_cols`."""
    _tiled(u, v, m, _DIRECT, j0, j1, _LEFT, u.shape[1], _ADD)


@njit(cache=True, fastmath=True, inline="always")
def gemm_tiled_inner(u, v, m, k_hi, add):
    """``m (+)= u[:, :k_hi] @ v[:k_hi]`` (``add`` true: onto ``m``), as :func:`gemm_tiled`:
    the left operand's rows longer than the inner dimension (laid out on cache lines,
    :func:`convlayers.kernels._bounds.line_stride`)."""
    _tiled(u, v, m, _DIRECT, _LEFT, v.shape[1], _LEFT, k_hi, add)


@njit(cache=True, fastmath=True, inline="always")
def gemm_indirect(u, v, offs, m):
    """``m = u @ V`` where row ``k`` of ``V`` is ``v[offs[k] : offs[k] + m.shape[1]]``, for a
    C-contiguous 1-D ``v`` and int64 ``offs`` (``u.shape[1]`` entries): the implicit GEMM of a
    convolution over a flat padded input, whose rows overlap (nothing is copied)."""
    _tiled(u, v, m, offs, _LEFT, m.shape[1], _LEFT, u.shape[1], _WRITE)


@njit(cache=True, fastmath=True, inline="always")
def gemm_indirect_cols(u, v, offs, m, j0, j1, add):
    """``m[:, j0:j1] (+)= u @ V[:, j0:j1]`` where row ``k`` of ``V`` starts at
    ``v[offs[k]]`` (so its column ``j`` is ``v[offs[k] + j]``), ``add`` true: onto ``m``: a
    product over a packed copy of some columns of a right operand."""
    _tiled(u, v, m, offs, j0, j1, _LEFT, u.shape[1], add)


@njit(cache=True, fastmath=True, inline="always")
def gemm_indirect_part(u, v, offs, m, k_lo, k_hi, add):
    """``m (+)= u[:, k_lo:k_hi] @ V[k_lo:k_hi]``, as :func:`gemm_indirect` over rows ``k_lo ..
    k_hi`` of ``V`` (``add`` true: onto ``m``): one chunk of a product whose inner dimension
    comes in parts, read in place from the whole left operand. The sums run as if the parts
    were one product."""
    _tiled(u, v, m, offs, _LEFT, m.shape[1], k_lo, k_hi, add)


@njit(cache=True, fastmath=True, inline="always")
def gemm_indirect_left_add(u, offs, v, m):
    """``m += U @ v`` where row ``p`` of ``U`` is ``u[offs[p] : offs[p] + v.shape[0]]``, for a
    C-contiguous 1-D ``u`` and int64 ``offs`` (``m.shape[0]`` entries): the weight gradient
    of the implicit GEMM."""
    _tiled(u, v, m, offs, _LEFT, m.shape[1], _LEFT, v.shape[0], _ADD)


@njit(cache=True, fastmath=True)
def _tiled(u, v, m, offs, j_lo, j_hi, k_lo, k_hi, accumulate):
    """Columns ``j_lo .. j_hi`` of ``m (+)= u[:, k_lo:k_hi] @ v[k_lo:k_hi]``: blocks of ``NC``
    columns, slabs of ``KC`` of the inner dimension (from ``k_lo``), blocks of ``MC`` rows,
    slivers of ``SLIVER_VECTORS`` vectors of columns (a last one of less than a vector joins
    the one before), bands of ``TILE_ROWS`` rows, tiles of ``TILE_VECTORS`` vectors and the
    columns left as :func:`_band` says (:func:`band_columns`), the last ``P % TILE_ROWS``
    rows as a band of edge tiles. Every band of a block of rows runs on one sliver before the
    next sliver (GotoBLAS's order; a product of one band takes the block as one sliver): the
    sliver's ``KC`` rows stay in L1 and the tiles stream the left operand's rows, where band by
    band over every column each tile read the right operand's rows from L2 again (0.82-1.04x
    the time on 12 dense and 1x1 layers, geo-mean 0.93). Nothing is
    copied or allocated. Fewer columns than a vector in all: masked tiles (the ``narrow``
    kind). Not inlined: every kernel calls this one compiled function (per dtype); inlined,
    the unrolled tiles were copied into each call site and first calls compiled for about
    30 s."""
    P = m.shape[0]
    R = TILE_ROWS
    lanes = (64 if _WIDE else 32) // u.itemsize
    width = j_hi - j_lo
    if width <= 0 or P == 0:
        return
    if k_hi <= k_lo:
        if not accumulate:
            for p in range(P):
                for j in range(j_lo, j_hi):
                    m[p, j] = 0
        return
    if width < lanes:  # narrower than a vector: masked tiles, in the tiles' order of sums
        for k0 in range(k_lo, k_hi, KC):
            k1 = min(k_hi, k0 + KC)
            for p in range(0, P, R):
                if accumulate or k0 > k_lo:
                    _narrow_add(u, v, m, offs, p, j_lo, k0, k1, min(R, P - p), width)
                else:
                    _narrow(u, v, m, offs, p, j_lo, k0, k1, min(R, P - p), width)
        return
    narrow = j_lo + width - width % lanes
    # one band (a few rows) reuses no sliver: it sweeps the block whole, on its widest tiles
    sliver = SLIVER_VECTORS * lanes if P > R else NC
    for c0 in range(j_lo, j_hi, NC):
        c1 = min(j_hi, c0 + NC)
        for k0 in range(k_lo, k_hi, KC):
            k1 = min(k_hi, k0 + KC)
            add = accumulate or k0 > k_lo
            for q0 in range(0, P, MC):
                q1 = min(P, q0 + MC)
                # a last band of a few rows sweeps the block whole after the slivers, on the
                # wider tiles of few rows (:func:`_band`)
                short = (q1 - q0) % R if (q1 - q0) % R <= SMALL_ROWS else 0
                for s0 in range(c0, c1, sliver):
                    s1 = min(c1, s0 + sliver)
                    if c1 - s1 < lanes:  # a last sliver of less than a vector joins this one
                        s1 = c1
                    for p in range(q0, q1 - short, R):
                        _band(u, v, m, offs, p, min(R, q1 - p), s0, s1, narrow, k0, k1, add)
                    if s1 == c1:
                        break
                if short:
                    _band(u, v, m, offs, q1 - short, short, c0, c1, narrow, k0, k1, add)


@njit(cache=True, inline="always")
def few_columns(rows, columns):
    """Whether a product of ``rows`` by ``columns`` (its widest) runs as :func:`gemm_few`."""
    return columns == 1 or (columns <= FEW_COLUMNS and rows >= FEW_MIN_ROWS)


@njit(cache=True, fastmath=True)
def gemm_few(u, v, m):
    """``m = u @ v`` as :func:`gemm_tiled`, for a product of few columns (``v (K, L)``, ``L``
    of at most ``FEW_COLUMNS``; ``u`` C-contiguous): column by column, four rows of ``u``
    against it at once, dot products along the inner dimension, vectorised over ``k``
    (chunks of ``FEW_KC`` of each column copied contiguous first, unless ``v`` is one column:
    then it is read in place and nothing is allocated). A transposed ``u`` (its columns
    contiguous) times one column is the columns of ``u`` scaled and added instead.

    A tile's vector lanes run along the columns, so a product of one column used one lane of
    each vector (of 16 with AVX-512) and of two an eighth; the dots fill them all: one column
    of 1617 by 200 rows ran 0.23x the tiles' time (memory-bound then, as BLAS's), two 0.46x,
    three by 64 rows 0.7x. With few rows, copying the columns costs more than the idle lanes
    (8 rows by 4 columns of 7625: 1.7x the tiles'; by one column, read in place, 0.26x), so
    callers keep products of two columns or more for many rows (:func:`few_columns`). Every
    output is summed by the same loop, whatever the product's width or the row's place, but
    in another order than the tiles' (partial sums per lane): a caller picks one or the other
    from its geometry, not from its units, so that its results do not depend on the units."""
    P, L, K = m.shape[0], m.shape[1], u.shape[1]
    if K == 0:  # no inner dimension: a zero product
        for p in range(P):
            for j in range(L):
                m[p, j] = 0
        return
    if L == 1 and u.strides[0] == u.itemsize and P > 1:
        # a transposed left operand (its columns contiguous) times one column: each column
        # scaled and added, vectorised along the rows, every output summed over k in order
        mf = m.reshape(P)
        ut = u.T
        for p in range(P):
            mf[p] = 0
        for k in range(K):
            a = v[k, 0]
            col = ut[k]
            for p in range(P):
                mf[p] += col[p] * a
        return
    if L == 1:  # the column is contiguous already
        c = v.reshape(v.size)
        for k0 in range(0, K, FEW_KC):
            _four_rows(u, c[k0: min(K, k0 + FEW_KC)], m, 0, k0)
        return
    column = np.empty(min(K, FEW_KC), dtype=m.dtype)
    for k0 in range(0, K, FEW_KC):
        n = min(K, k0 + FEW_KC) - k0
        for j in range(L):
            for k in range(n):
                column[k] = v[k0 + k, j]
            _four_rows(u, column[:n], m, j, k0)


@njit(cache=True, fastmath=True, inline="always")
def _four_rows(u, c, m, j, k0):
    """Column ``j`` of :func:`gemm_few`'s product, the part of the inner dimension from ``k0``
    (``c``, contiguous; onto the parts before): four rows of ``u`` at a time (the last
    repeated past its end), the one loop every output is summed by."""
    P = m.shape[0]
    n = c.shape[0]
    for p0 in range(0, P, 4):
        r0 = u[p0, k0:]
        r1 = u[min(p0 + 1, P - 1), k0:]
        r2 = u[min(p0 + 2, P - 1), k0:]
        r3 = u[min(p0 + 3, P - 1), k0:]
        s0, s1, s2, s3 = r0[0] * c[0], r1[0] * c[0], r2[0] * c[0], r3[0] * c[0]
        for k in range(1, n):
            s0 += r0[k] * c[k]
            s1 += r1[k] * c[k]
            s2 += r2[k] * c[k]
            s3 += r3[k] * c[k]
        for i, s in enumerate((s0, s1, s2, s3)):
            if p0 + i < P:
                m[p0 + i, j] = m[p0 + i, j] + s if k0 > 0 else s


@njit(cache=True, fastmath=True)
def _band(u, v, m, offs, p, rows, c0, c1, narrow, k0, k1, add):
    """Rows ``p .. p+rows`` (``rows <= TILE_ROWS``), columns ``c0 .. c1``, inner slab ``k0 ..
    k1`` of :func:`_tiled` (``narrow``: ``c1`` less the columns past the last whole vector).

    Wide tiles (``TILE_VECTORS`` vectors) over the columns they fill; then, more than a vector
    left, one more wide tile ending at ``c1`` (the columns it shares with the last one kept as
    they were), else the last vector's columns as the vector ending at ``c1``. A band narrower
    than a wide tile (more than a vector) is one wide tile, its last vectors masked. A one-vector
    tile loads a vector and broadcasts ``TILE_ROWS`` scalars for ``TILE_ROWS`` multiply-adds,
    a wide one for three times as many: on 328 x 3925 products (one core, AVX-512), 81 columns
    ran 121 -> 137 GF/s and 45 columns 118 -> 140 once their last 33 or all 45 columns took one
    wide tile instead of three one-vector ones. :func:`band_columns` is the cost model's copy of
    these rules."""
    R = TILE_ROWS
    lanes = (64 if _WIDE else 32) // u.itemsize
    step = TILE_VECTORS * lanes
    if lanes < c1 - c0 < step:  # narrower than a wide tile: one, its last vectors masked
        if add:
            _narrow_wide_add(u, v, m, offs, p, c0, k0, k1, rows, c1 - c0)
        else:
            _narrow_wide(u, v, m, offs, p, c0, k0, k1, rows, c1 - c0)
        return
    end = min(c1, narrow)
    start = c0
    if rows <= SMALL_ROWS:
        small = SMALL_VECTORS * lanes
        start = c0 + (end - c0) - (end - c0) % small if end > c0 else c0
        for j0 in range(c0, start, small):
            if add:
                _small_add(u, v, m, offs, p, j0, k0, k1, rows, j0)
            else:
                _small(u, v, m, offs, p, j0, k0, k1, rows, j0)
    wide = start + (end - start) - (end - start) % step if end > start else start
    # more than one vector left after the wide tiles: one more wide tile, ending at ``c1``
    # (columns before ``wide`` kept), where one-vector tiles would load a vector per row each
    overlap = c1 - wide > lanes and c1 - step >= c0
    for j0 in range(start, wide, step):
        if rows < R:
            if add:
                _edge_wide_add(u, v, m, offs, p, j0, k0, k1, rows, j0)
            else:
                _edge_wide(u, v, m, offs, p, j0, k0, k1, rows, j0)
        elif add:
            _tile_wide_add(u, v, m, offs, p, j0, k0, k1)
        else:
            _tile_wide(u, v, m, offs, p, j0, k0, k1)
    if overlap:
        if add:
            _edge_wide_add(u, v, m, offs, p, c1 - step, k0, k1, rows, wide)
        else:
            _edge_wide(u, v, m, offs, p, c1 - step, k0, k1, rows, wide)
        return
    for j0 in range(wide, end, lanes):
        if rows < R:
            if add:
                _edge_one_add(u, v, m, offs, p, j0, k0, k1, rows, j0)
            else:
                _edge_one(u, v, m, offs, p, j0, k0, k1, rows, j0)
        elif add:
            _tile_one_add(u, v, m, offs, p, j0, k0, k1)
        else:
            _tile_one(u, v, m, offs, p, j0, k0, k1)
    if c1 > end:
        if add:
            _edge_one_add(u, v, m, offs, p, c1 - lanes, k0, k1, rows, end)
        else:
            _edge_one(u, v, m, offs, p, c1 - lanes, k0, k1, rows, end)


def band_columns(columns: int, lanes: int) -> tuple[int, int]:
    """``(wide, one)``: the product columns a band of :func:`_band` computes for ``columns``
    output columns on wide tiles and on one-vector tiles (the overlapping, masked or partial
    ones whole). ``lanes``: a vector's elements. The cost model's copy of :func:`_band`'s
    rules (:func:`convlayers.functional._engine_shared.costed_units`).

    A wide tile is ``TILE_VECTORS`` vectors (2 with AVX2, 3 with AVX-512); these columns
    band alike on both: a vector's worth runs one-vector tiles, 96 is whole wide tiles, and
    one column more adds a one-vector tile:

    >>> band_columns(12, 16), band_columns(96, 16), band_columns(97, 16)
    ((0, 16), (96, 0), (96, 16))
    """
    step = TILE_VECTORS * lanes
    if columns <= lanes:
        return 0, lanes
    if columns < step:
        return step, 0
    rest = columns % step
    if rest == 0:
        return columns, 0
    return (columns - rest, lanes) if rest <= lanes else (columns - rest + step, 0)


#: Pixels of a direct convolution's tile when its block has one vector of output channels,
#: and on AVX-512 two (the projections of mobile networks to 16, 24 or 32 channels): a tall,
#: narrow tile keeps as many accumulators busy (12 by 2 there) where 6 rows by one vector
#: kept 6, and does 24 channels in one pass, its second vector masked, where it took two.
TALL_ROWS = 2 * CONV_ROWS
#: Pixels of the tall tile of two vectors: :data:`TALL_ROWS` where the register file holds
#: its 24 accumulators (AVX-512's 32 registers); AVX2's 16 hold 12, so there it is the wide
#: tile's height (24 accumulators spilled to the stack at every step: MobileNetV2's 32 -> 16
#: projection on 112x112 ran at 23 GMAC/s on two Zen 3 cores).
TALL_TWO_ROWS = TALL_ROWS if _WIDE else CONV_ROWS
#: Pixels of the tile of three vectors (AVX-512 only: 8 by 3, 24 accumulators) that a block
#: of 33-48 float32 output channels runs on. On the wide tiles such a block took two passes
#: over the input's taps, 6 pixels by two vectors and 6 by one (12 and 6 accumulators, every
#: input value broadcast twice): 15 -> 48 5x5 on 4x15x40x40, the product 0.80 ms there and
#: 0.72 on this tile (its weights packed 48 columns wide, not in a 64-column strip).
TALL_THREE_ROWS = 8
_conv_wide = _make_conv_tile("edge", CONV_VECTORS)
_conv_half = _make_conv_tile("edge", max(1, CONV_VECTORS // 2))
_conv_one = _make_conv_tile("edge", 1)
_conv_narrow = _make_conv_tile("narrow", 1)
_conv_tall_one = _make_conv_tile("narrow", 1, TALL_ROWS)
_conv_tall_two = _make_conv_tile("narrow", 2, TALL_TWO_ROWS)
_conv_tall_three = _make_conv_tile("narrow", 3, TALL_THREE_ROWS)
_conv_wide_masked = _make_conv_tile("narrow", CONV_VECTORS)
#: Bytes of a direct convolution's weight panel (taps by a slab of input channels by a block
#: of ``NC`` output channels) that one pass over a unit's bands keeps in the L2 cache.
CONV_PANEL_BYTES = 512 * 1024


def conv_strip() -> int:
    """Columns of one packed strip of a direct convolution's weights: a wide tile's."""
    return CONV_VECTORS * VECTOR_BYTES


def pack_conv_weights(w: np.ndarray) -> np.ndarray:
    """A convolution's weights ``w (C_out, C_in, kh, kw)`` as the direct kernel reads them:
    ``W (kh*kw*C_in, C_out)`` (row ``(i*kw + j)*C_in + ci``) in strips of :func:`conv_strip`
    ``// itemsize`` columns, each strip's rows contiguous, zeros past ``C_out``:
    ``(strips * K, strip)``. A tile then reads consecutive rows of 256 bytes; from ``W``
    itself, rows ``4 * C_out`` bytes apart (2 KiB for 512 channels) fell into a few cache
    sets and the panel streamed from L3. Packed by :func:`pack_conv_weights_into`."""
    c_out, c_in, kh, kw = w.shape
    strip = conv_strip() // w.itemsize
    packed = np.empty((-(-c_out // strip) * kh * kw * c_in, strip), w.dtype)
    pack_conv_weights_into(np.ascontiguousarray(w), packed)
    return packed


def pack_conv_weights_into(w: np.ndarray, out: np.ndarray,
                           window: tuple[int, int, int, int] | None = None) -> None:
    """:func:`pack_conv_weights` of a contiguous ``w`` into ``out (strips * K, strip)`` in
    parallel (the eager ``direct`` strategy packs on every call): each strip is the transpose
    of its ``strip`` rows of ``w`` seen as ``(C_out, C_in*kh*kw)``, with its columns (input
    channel by tap) sent to their packed rows (tap by input channel), in chunks of
    :data:`PACK_CHUNK` columns, a vector's lanes of rows by a vector of columns at a time
    through :func:`transpose_block`; a partial last strip's columns past ``C_out`` are zeros.

    ``window`` ``(r0, c0, kh, kw)`` packs only those taps of ``w``'s kernel (rows ``r0`` to
    ``r0 + kh``, columns ``c0`` to ``c0 + kw``: a kernel cropped to the taps that reach the
    input, :mod:`convlayers.functional._engine_crop`) into ``K = kh*kw*C_in`` rows, reading
    ``w`` in place; ``out`` then has :data:`PACK_SPARE_ROWS` more rows at its end, which the
    other columns are sent to and nobody reads. A copy of the window first would read the weight twice (a
    160x497x6x6 weight: 0.64 ms of copy before a 0.5 ms packing).

    A gather of each packed row, one value at a time, ran 10-19 GB/s (its strided reads
    from 64 rows of ``w`` at once): 0.41-0.65x that time on 95x144x6x5, 250x108x7x5,
    256x256x3x3 and 512x512x3x3 weights, 0.84-1.06x on small ones (two threads), the
    gather's 0.24 ms of a 1.7 ms 144 -> 95 6x5 direct forward 0.12."""
    if window is None:
        _pack_transposed(w, 0, 0, w.shape[2], w.shape[3], out, PACK_CHUNK)
    else:
        _pack_transposed(w, *window, out, PACK_CHUNK)


#: Columns of ``w`` (input channel by tap) one unit of :func:`pack_conv_weights_into` takes.
PACK_CHUNK = 256
#: Rows past the packed ones that a window's other columns are sent to
#: (:func:`pack_conv_weights_into`), one a unit in turn.
PACK_SPARE_ROWS = 32


@njit(parallel=True, cache=True)
def _pack_transposed(w, r0, c0, kh, kw, out, chunk):
    """:func:`pack_conv_weights_into` in units of (strip, ``chunk`` columns of ``w``)."""
    c_out, c_in, full_h, full_w = w.shape
    full = full_h * full_w * c_in  # columns of w seen as (C_out, C_in*kh*kw)
    taps = kh * kw
    k_rows = taps * c_in
    strip = out.shape[1]
    strips = (c_out + strip - 1) // strip
    lanes = VECTOR_BYTES // w.itemsize
    wf = w.reshape(w.size)
    of = out.reshape(out.size)
    cropped = taps < full_h * full_w
    # the spare rows past the packed ones (cropped only), a unit's by its number: one shared
    # row, written by both threads, ran 5x as long (its cache lines passed between the cores)
    spares = out.shape[0] - strips * k_rows
    # column (ci, i, j) of w -> packed row ((i - r0)*kw + j - c0)*c_in + ci, or -1 outside
    dest = np.full(full, -1, np.int64)
    for ci in range(c_in):
        for i in range(kh):
            for j in range(kw):
                dest[ci * full_h * full_w + (r0 + i) * full_w + c0 + j] = (
                    (i * kw + j) * c_in + ci) * strip
    chunks = (full + chunk - 1) // chunk
    for unit in prange(strips * chunks):
        s, q = unit // chunks, unit % chunks
        q0 = q * chunk
        q1 = min(full, q0 + chunk)
        width = min(strip, c_out - s * strip)
        at = s * k_rows * strip
        if width < strip:  # the columns past C_out, from the last whole vector of them on
            first = width - width % lanes
            for kk in range(q0, q1):
                if dest[kk] >= 0:
                    o = at + dest[kk]
                    of[o + first:o + strip] = 0
        if cropped:  # each column's packed row, from this strip's start, or the spare row
            table = np.empty(q1 - q0, np.int64)
            for kk in range(q0, q1):
                table[kk - q0] = (at + dest[kk] if dest[kk] >= 0
                                  else (strips * k_rows + unit % spares) * strip)
            transpose_block(wf, s * strip * full + q0, full, width, q1 - q0, of, table, 0)
        else:
            transpose_block(wf, s * strip * full + q0, full, width, q1 - q0, of, dest[q0:q1],
                            at)


@njit(cache=True, fastmath=True)
def conv_rows(x, width):
    """Pixels per band of :func:`conv_band` for a block of ``width`` output channels."""
    return band_pixels(width, (64 if _WIDE else 32) // x.itemsize)


@njit(cache=True)
def band_pixels(width, lanes):
    """Pixels per band of :func:`conv_band` for a block of ``width`` output channels of
    ``lanes`` to a vector: :data:`TALL_ROWS` for one vector, :data:`TALL_TWO_ROWS` for two,
    :data:`TALL_THREE_ROWS` for three (AVX-512), else :data:`CONV_ROWS`."""
    if width <= lanes:
        return TALL_ROWS
    if width <= 2 * lanes:
        return TALL_TWO_ROWS
    return TALL_THREE_ROWS if _WIDE and width <= 3 * lanes else CONV_ROWS


@njit(cache=True, fastmath=True)
def conv_slab(x, ntaps, width):
    """Input channels per slab of a direct convolution whose units span ``width`` output
    columns: the block's weight panel (``ntaps`` taps by the slab by ``min(width, NC)``
    columns) within :data:`CONV_PANEL_BYTES`, a multiple of a vector."""
    lanes = (64 if _WIDE else 32) // x.itemsize
    block = max(1, min(width, NC))
    return max(lanes, CONV_PANEL_BYTES // (ntaps * block * x.itemsize) // lanes * lanes)


@njit(cache=True, fastmath=True)
def conv_band(x, w, m, offs, toffs, p, rows, c0, c1, k0, k1, bias, res, finish):
    """:func:`conv_band_taps` over every tap of ``toffs``."""
    conv_band_taps(x, w, m, offs, toffs, _LEFT, toffs.size, p, rows, c0, c1, k0, k1, bias, res,
                   finish)


@njit(cache=True, fastmath=True, inline="always")
def conv_band_taps(x, w, m, offs, toffs, t0, t1, p, rows, c0, c1, k0, k1, bias, res, finish):
    """:func:`conv_band_taps_onto`, adding onto ``m`` when ``k0 > 0`` (a later slab of input
    channels); inlined, so a caller's band is one call, as before the explicit ``add``."""
    conv_band_taps_onto(x, w, m, offs, toffs, t0, t1, p, rows, c0, c1, k0, k1, bias, res, finish,
                        1 if k0 > 0 else 0)


@njit(cache=True, fastmath=True)
def conv_band_taps_onto(x, w, m, offs, toffs, t0, t1, p, rows, c0, c1, k0, k1, bias, res, finish,
                        add):
    """Rows ``p .. p+rows``, columns ``c0 .. c1`` (``c0`` a multiple
    of a strip), input channels ``k0 .. k1`` of ``m (+)= sum_t X_t @ W[t*C : (t+1)*C]``
    (``+=`` when ``add`` is nonzero): a direct convolution over a flat, padded, channels-last
    input ``x`` with ``C`` channels, where row ``p`` of ``X_t`` is
    ``x[offs[p] + toffs[t] : ... + C]`` (output pixel ``p``'s window at tap ``t``) and ``w`` is
    ``W (ntaps*C, C_out)`` packed by :func:`pack_conv_weights`, summed over the taps
    ``t0 <= t < t1`` only (``ntaps = toffs.size``): the others are left out, as the taps a
    band's windows read only from the zero padding (:func:`convlayers.inference.conv_last.dense`).

    Each tile keeps its pixels by up to ``CONV_VECTORS`` vectors of output channels in
    registers across every tap of the slab; the columns a wide tile leaves on tiles of half
    its vectors, then of one, the last (fewer than a vector) masked. A block of at most two
    vectors (three with AVX-512) runs on one tall tile, its loads and stores masked. The rows
    run in bands of a tile's pixels (:func:`band_pixels`), every column of a band before the
    next: one call for many bands costs its setup once (about 300 cycles a call on Zen 3,
    against some 150 for a 6 x 16 tile of 16 input channels).

    ``finish`` at least 0 (the last slab): the sums are finished in registers before they
    are stored, ``act(sum + bias[col] (+ res[row, col]))`` (:func:`_tile_epilogue`: bits 0-2
    the activation, 1 ReLU or 2 ReLU6, bit 3 the residual); below 0 they are stored as they
    are. ``res`` is shaped like ``m`` (``m`` itself when there is no residual)."""
    S = w.shape[1]
    K = w.shape[0] // ((m.shape[1] + S - 1) // S)
    C = K // toffs.size
    ntaps = t1 - t0
    first = t0 * C  # the first summed tap's rows in each strip
    toffs = toffs[t0:t1]
    lanes = (64 if _WIDE else 32) // x.itemsize
    step = band_pixels(c1 - c0, lanes)
    if c1 - c0 <= (3 if _WIDE else 2) * lanes:  # a narrow block, on one tall tile
        two = c1 - c0 > lanes
        for q in range(p, p + rows, step):
            band = min(step, p + rows - q)
            if c1 - c0 > 2 * lanes:
                _conv_tall_three(x, w, m, offs, q, c0, k0, k1, band, c1 - c0, toffs, ntaps, C,
                                 (c0 // S) * K + first, c0 % S, add, bias, res, finish)
            elif two:
                _conv_tall_two(x, w, m, offs, q, c0, k0, k1, band, c1 - c0, toffs, ntaps, C,
                               (c0 // S) * K + first, c0 % S, add, bias, res, finish)
            else:
                _conv_tall_one(x, w, m, offs, q, c0, k0, k1, band, c1 - c0, toffs, ntaps, C,
                               (c0 // S) * K + first, c0 % S, add, bias, res, finish)
        return
    half = max(1, CONV_VECTORS // 2) * lanes
    end = c1 - (c1 - c0) % lanes
    wide = c0 + (end - c0) - (end - c0) % S
    halves = wide + (end - wide) - (end - wide) % half if half > lanes else wide
    # a last part past all but one vector of a strip on one wide tile, its last vector
    # masked: 60 channels took three passes over the input's taps on tiles of two, one and
    # one masked vector (12, 6 and 6 accumulators), 12 -> 60 7x6 on 17x12x13x13 0.37-0.38
    # ms against 0.31-0.34 in one; a part of three vectors stays on two tiles (64 -> 112 3x3
    # on 8x64x28x28: 2.5 ms, on the wide tile with a vector of nothing 2.8)
    masked = CONV_VECTORS > 2 and c1 - wide > (CONV_VECTORS - 1) * lanes
    for q in range(p, p + rows, step):
        band = min(step, p + rows - q)
        for j0 in range(c0, wide, S):
            _conv_wide(x, w, m, offs, q, j0, k0, k1, band, j0, toffs, ntaps, C,
                       (j0 // S) * K + first, j0 % S, add, bias, res, finish)
        if masked:
            _conv_wide_masked(x, w, m, offs, q, wide, k0, k1, band, c1 - wide, toffs, ntaps,
                              C, (wide // S) * K + first, wide % S, add, bias, res, finish)
            continue
        for j0 in range(wide, halves, half):
            _conv_half(x, w, m, offs, q, j0, k0, k1, band, j0, toffs, ntaps, C,
                       (j0 // S) * K + first, j0 % S, add, bias, res, finish)
        for j0 in range(halves, end, lanes):
            _conv_one(x, w, m, offs, q, j0, k0, k1, band, j0, toffs, ntaps, C,
                      (j0 // S) * K + first, j0 % S, add, bias, res, finish)
        if c1 > end:
            _conv_narrow(x, w, m, offs, q, end, k0, k1, band, c1 - end, toffs, ntaps, C,
                         (end // S) * K + first, end % S, add, bias, res, finish)


def _emit_interleave3(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    """A vector each of ``r``, ``g``, ``b`` from element ``at``, stored as their
    ``3 * lanes`` values pixel by pixel (``r0 g0 b0 r1 ...``) from ``out[out_at]``: two
    shuffles LLVM lowers to permutes of whole vectors, not a scalar store per value."""
    arrays = [context.make_array(signature.args[k])(context, builder, args[k])
              for k in (0, 1, 2, 4)]
    at, out_at = args[3], args[5]
    itemsize = context.get_abi_sizeof(context.get_value_type(signature.args[0].dtype))
    lanes = VECTOR_BYTES // itemsize
    scalar = context.get_value_type(signature.args[0].dtype)
    vec, i32 = ir.VectorType(scalar, lanes), ir.IntType(32)

    def mask(values: list[int]) -> Any:
        return ir.Constant(ir.VectorType(i32, len(values)), values)

    r, g, b = (builder.load(builder.bitcast(builder.gep(a.data, [at]), vec.as_pointer()),
                            align=itemsize) for a in arrays[:3])
    rg = builder.shuffle_vector(r, g, mask(list(range(2 * lanes))))
    b2 = builder.shuffle_vector(b, ir.Constant(vec, None), mask(list(range(2 * lanes))))
    order = [v for i in range(lanes) for v in (i, lanes + i, 2 * lanes + i)]
    pixels = builder.shuffle_vector(rg, b2, mask(order))
    ptr = builder.bitcast(builder.gep(arrays[3].data, [out_at]),
                          ir.VectorType(scalar, 3 * lanes).as_pointer())
    builder.store(pixels, ptr, align=itemsize)
    return context.get_dummy_value()


@intrinsic
def interleave3(typingctx: Any, r: Any, g: Any, b: Any, at: Any, out: Any, out_at: Any) -> Any:
    """``out[out_at + 3*i + k] = (r, g, b)[k][at + i]`` for ``i <`` a vector's lanes: three
    planes' values stored pixel by pixel (an RGB image to channels-last). 1-D contiguous
    float arrays of one dtype."""
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
               and a.dtype == r.dtype and a.dtype in (types.float32, types.float64)
               for a in (r, g, b, out)):
        return None
    return types.void(r, g, b, types.intp, out, types.intp), _emit_interleave3


def _emit_transpose(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    """Load ``n`` vectors (``n`` the lanes of one), row ``r`` from ``src[base + r*stride]``,
    transpose them in registers, store vector ``k`` at ``dst[dst_base + table[q0 + k]]``:
    ``log2(n)`` stages of shuffles, each swapping the elements ``s`` apart between rows ``s``
    apart (rows ``i``, ``i + s``: ``a[c + s]`` with ``b[c]`` where bit ``s`` of ``c`` is 0).
    With ``rows`` and ``cols`` (:func:`transpose_part`), only rows ``r < rows`` and their
    first ``cols`` elements are read (masked loads, zeros past them) and only vectors ``k <
    cols`` stored, their first ``rows`` lanes (masked stores)."""
    st, _, _, dt, tt = signature.args[:5]
    sa, da, ta = (context.make_array(t)(context, builder, a)
                  for t, a in ((st, args[0]), (dt, args[3]), (tt, args[4])))
    base, stride, q0, dst_base = args[1], args[2], args[5], args[6]
    part = len(args) > 7
    itemsize = context.get_abi_sizeof(context.get_value_type(st.dtype))
    n = VECTOR_BYTES // itemsize
    vec = ir.VectorType(context.get_value_type(st.dtype), n)
    vptr = vec.as_pointer()
    intp, i32 = context.get_value_type(types.intp), ir.IntType(32)
    lanes = ir.Constant(ir.VectorType(intp, n), list(range(n)))
    if part:
        rows_n, cols_n = args[7], args[8]
        name = f"v{n}{'f32' if itemsize == 4 else 'f64'}"
        mask_t = ir.VectorType(ir.IntType(1), n)
        mload = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            vec, [vptr, i32, mask_t, vec]), f"llvm.masked.load.{name}.p0")
        mstore = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [vec, vptr, i32, mask_t]), f"llvm.masked.store.{name}.p0")
        align = ir.Constant(i32, itemsize)

        def below(count: Any) -> Any:  # lanes t < count
            splat = builder.shuffle_vector(
                builder.insert_element(ir.Constant(ir.VectorType(intp, n), None), count,
                                       ir.Constant(i32, 0)),
                ir.Constant(ir.VectorType(intp, n), None), ir.Constant(ir.VectorType(i32, n),
                                                                        [0] * n))
            return builder.icmp_signed("<", lanes, splat)

        col_mask, row_mask = below(cols_n), below(rows_n)
        none = ir.Constant(mask_t, [0] * n)
        zero = ir.Constant(vec, [0.0] * n)

    def source(r: int) -> Any:
        return builder.bitcast(builder.gep(sa.data, [builder.add(
            base, builder.mul(stride, ir.Constant(intp, r)))]), vptr)

    if part:
        # a row past ``rows`` is read with no lane on, from row 0's address: at its own, past
        # the source's end and often on an unmapped page, each such load took a fault
        # suppression assist, and the copy ran at 0.4-1.2 GB/s instead of 5-28 (9 -> 16
        # 7x7 stride 3 on 3x9x191x191: 2.1 ms for the channels-last copy, against 0.9 for
        # the convolution), by where the array happened to lie in memory
        rows = []
        for r in range(n):
            inside = builder.icmp_signed("<", ir.Constant(intp, r), rows_n)
            at = builder.select(inside, source(r), source(0))
            rows.append(builder.call(mload, [at, align, builder.select(inside, col_mask, none),
                                             zero]))
    else:
        rows = [builder.load(source(r), align=itemsize) for r in range(n)]
    s = 1
    while s < n:
        lo = ir.Constant(ir.VectorType(i32, n), [c if c & s == 0 else n + c - s for c in range(n)])
        hi = ir.Constant(ir.VectorType(i32, n), [c + s if c & s == 0 else n + c for c in range(n)])
        for i in range(n):
            if i & s == 0:
                a, b = rows[i], rows[i + s]
                rows[i] = builder.shuffle_vector(a, b, lo)
                rows[i + s] = builder.shuffle_vector(a, b, hi)
        s *= 2
    for k in range(n):
        kept = builder.icmp_signed("<", ir.Constant(intp, k), cols_n) if part else None
        with builder.if_then(kept) if part else contextlib.nullcontext():
            at = builder.load(builder.gep(ta.data, [builder.add(q0, ir.Constant(intp, k))]))
            ptr = builder.bitcast(builder.gep(da.data, [builder.add(dst_base, at)]), vptr)
            if part:
                masked_store(builder, mstore, rows[k], ptr, align, row_mask)
            else:
                builder.store(rows[k], ptr, align=itemsize)
    return context.get_dummy_value()


def _transpose_types(src: Any, dst: Any, table: Any) -> bool:
    floats = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                 and a.dtype == src.dtype and a.dtype in (types.float32, types.float64)
                 for a in (src, dst))
    return floats and isinstance(table, types.Array) and table.ndim == 1 \
        and table.dtype == types.int64


@intrinsic
def transpose_vectors(typingctx: Any, src: Any, base: Any, stride: Any, dst: Any, table: Any,
               q0: Any, dst_base: Any) -> Any:
    """The in-register transpose of :func:`_emit_transpose` (1-D C-contiguous float arrays of
    one dtype, an int64 table): a square block of a vector's lanes copied across, in
    ``log2(lanes)`` stages of shuffles. The channels-last depthwise kernels and the 1x1 weight
    gradient's transposed scratch use it (one element at a time, those copies cost more than
    the arithmetic on small maps)."""
    if not _transpose_types(src, dst, table):
        return None
    return (types.void(src, types.intp, types.intp, dst, table, types.intp, types.intp),
            _emit_transpose)


@intrinsic
def transpose_part(typingctx: Any, src: Any, base: Any, stride: Any, dst: Any, table: Any,
                   q0: Any, dst_base: Any, rows: Any, cols: Any) -> Any:
    """:func:`transpose_vectors` of the first ``rows`` rows and ``cols`` columns of the square
    block (each at most a vector's lanes): nothing past them is read or written (masked
    loads and stores), for the ragged ends of a copy, which one element at a time took as
    long as the whole vectors (a block of 64 planes of 11x11: 9 of 121 positions a plane)."""
    if not _transpose_types(src, dst, table):
        return None
    i = types.intp
    return types.void(src, i, i, dst, table, i, i, i, i), _emit_transpose


@njit(cache=True, fastmath=True, inline="always")
def transpose_block(src, base, stride, rows, cols, dst, table, dst_base):
    """``dst[dst_base + table[q] + r] = src[base + r*stride + q]`` for ``r < rows``, ``q <
    cols`` (1-D C-contiguous float arrays of one dtype, an int64 ``table`` of at least
    ``cols`` entries): the layout copies between channels-first and channels-last, a
    vector's lanes of rows by a vector of columns at a time through
    :func:`transpose_vectors`, the ragged ends through :func:`transpose_part`. Nothing past
    the block is read or written. A store per value, each on another cache line, ran 2-4x
    as long (9 GB/s: a quarter of the direct strategy's call on 224 -> 15 7x7 stride 3)."""
    lanes = VECTOR_BYTES // src.itemsize
    for r0 in range(0, rows, lanes):
        nr = min(lanes, rows - r0)
        for q0 in range(0, cols, lanes):
            nq = min(lanes, cols - q0)
            if nr == lanes and nq == lanes:
                transpose_vectors(src, base + r0 * stride + q0, stride, dst, table, q0,
                                  dst_base + r0)
            else:
                transpose_part(src, base + r0 * stride + q0, stride, dst, table, q0,
                               dst_base + r0, nr, nq)


#: Vectors of channels one :data:`taps_vector` call sums at most (independent accumulators:
#: with one, each vector waited on a chain of nine dependent multiply-adds, 45 cycles).
TAP_VECTORS = 4
#: Output pixels one step of :data:`taps_row` computes together (independent accumulators, and
#: the input columns their windows share loaded once).
ROW_PIXELS = 4
#: ``(kernel size, stride)`` pairs :data:`taps_row` serves (square kernels, column dilation 1):
#: the depthwise layers of MobileNetV2 and EfficientNet-Lite0.
ROW_KERNELS = ((3, 1), (3, 2), (5, 1), (5, 2))


class _Lanes:
    """What the tap emitters share for one float dtype: the vector type, fused multiply-add,
    masked loads and stores, and the epilogue (residual, ReLU/ReLU6) as selects."""

    def __init__(self, context: Any, builder: Any, dtype: Any) -> None:
        self.builder = builder
        itemsize = context.get_abi_sizeof(context.get_value_type(dtype))
        self.lanes = VECTOR_BYTES // itemsize
        lanes = self.lanes
        self.vec = ir.VectorType(context.get_value_type(dtype), lanes)
        self.vptr = self.vec.as_pointer()
        self.intp, self.i32 = context.get_value_type(types.intp), ir.IntType(32)
        name = f"v{lanes}{'f32' if itemsize == 4 else 'f64'}"
        module = builder.module
        self.fma = cgutils.get_or_insert_function(
            module, ir.FunctionType(self.vec, [self.vec] * 3), f"llvm.fma.{name}")
        mask_t = ir.VectorType(ir.IntType(1), lanes)
        self.mload = cgutils.get_or_insert_function(module, ir.FunctionType(
            self.vec, [self.vptr, self.i32, mask_t, self.vec]), f"llvm.masked.load.{name}.p0")
        self.mstore = cgutils.get_or_insert_function(module, ir.FunctionType(
            ir.VoidType(), [self.vec, self.vptr, self.i32, mask_t]), f"llvm.masked.store.{name}.p0")
        self.align = ir.Constant(self.i32, itemsize)
        self.zero = ir.Constant(self.vec, [0.0] * lanes)
        self.six = ir.Constant(self.vec, [6.0] * lanes)
        self.ivec = ir.VectorType(self.intp, lanes)
        self.spread = ir.Constant(ir.VectorType(self.i32, lanes), [0] * lanes)

    def const(self, value: int) -> Any:
        return ir.Constant(self.intp, value)

    def splat(self, scalar: Any, vector_type: Any) -> Any:
        b = self.builder
        return b.shuffle_vector(b.insert_element(ir.Constant(vector_type, None), scalar,
                                                 ir.Constant(self.i32, 0)),
                                ir.Constant(vector_type, None), self.spread)

    def masks(self, count: Any, vectors: int) -> list[Any]:
        """Lane masks of ``vectors`` consecutive vectors: the first ``count`` elements."""
        b, lanes = self.builder, self.lanes
        limit = self.splat(count, self.ivec)
        return [b.icmp_signed("<", ir.Constant(self.ivec, [h * lanes + t for t in range(lanes)]),
                              limit) for h in range(vectors)]

    def by_vectors(self, count: Any, body: Any) -> None:
        """``body(vectors)`` emitted for :data:`TAP_VECTORS`, 2 and 1 vectors, the one run
        picked by ``count`` (channels left): 32 channels on four vectors wasted half the
        multiply-adds."""
        b = self.builder
        more_than = [b.icmp_signed(">", count, self.const(m * self.lanes)) for m in (2, 1)]
        with b.if_else(more_than[0]) as (wide, narrow):
            with wide:
                body(TAP_VECTORS)
            with narrow, b.if_else(more_than[1]) as (two, one):
                with two:
                    body(2)
                with one:
                    body(1)

    def ptr(self, arr: Any, index: Any, h: int = 0) -> Any:
        b = self.builder
        return b.bitcast(b.gep(arr.data, [b.add(index, self.const(h * self.lanes))]), self.vptr)

    def load(self, arr: Any, index: Any, mask: Any, h: int = 0) -> Any:
        return self.builder.call(self.mload, [self.ptr(arr, index, h), self.align, mask,
                                              self.zero])

    def finish_store(self, value: Any, res: Any, index: Any, mask: Any, has_res: Any, act: Any,
                     out: Any, h: int = 0) -> None:
        """``out[index:] = act(value (+ res[index:]))`` under ``mask``: the residual when
        ``has_res``, ReLU (``act`` 1) or ReLU6 (2) as compares and selects (NaN stays NaN, as
        in torch), any other code none."""
        b = self.builder
        value = b.select(has_res, b.fadd(value, self.load(res, index, mask, h)), value)
        value = b.select(b.icmp_signed("==", act, self.const(1)), self.activated(value, 1),
                         b.select(b.icmp_signed("==", act, self.const(2)),
                                  self.activated(value, 2), value))
        masked_store(b, self.mstore, value, self.ptr(out, index, h), self.align, mask)

    def activated(self, value: Any, act: int) -> Any:
        """``value`` through ReLU (``act`` 1) or ReLU6 (2) as compares and selects (NaN stays
        NaN, as in torch); any other code returns it as it is."""
        b = self.builder
        if act in (1, 2):
            value = b.select(b.fcmp_ordered("<", value, self.zero), self.zero, value)
        if act == 2:
            value = b.select(b.fcmp_ordered(">", value, self.six), self.six, value)
        return value

    def finish_store_fixed(self, value: Any, res: Any, index: Any, mask: Any, has_res: bool,
                           act: int, out: Any) -> None:
        """:meth:`finish_store` with the residual and activation known when emitting (``act``
        1 ReLU, 2 ReLU6, 0 none): no load of ``res`` without a residual and no select between
        activations, which the loops of a row kernel then do not carry."""
        b = self.builder
        if has_res:
            value = b.fadd(value, self.load(res, index, mask))
        masked_store(b, self.mstore, self.activated(value, act), self.ptr(out, index),
                     self.align, mask)

    def by_epilogue(self, has_res: Any, act: Any, body: Any) -> None:
        """``body(has_res, act)`` emitted for each residual flag and activation code (1 ReLU,
        2 ReLU6, 0 any other: none), the one run picked by the run-time ``has_res`` and
        ``act``: with the choice made once outside a row kernel's loops, not by selects at
        every store, the row ran 1.1-1.6x as fast (channels-last depthwise 3x3, 28x28 to
        112x112 maps, Zen 3)."""
        b = self.builder
        relu = b.icmp_signed("==", act, self.const(1))
        relu6 = b.icmp_signed("==", act, self.const(2))
        for flag in (False, True):
            chosen_res = has_res if flag else b.not_(has_res)
            for code, test in ((1, relu), (2, relu6), (0, b.not_(b.or_(relu, relu6)))):
                with b.if_then(b.and_(chosen_res, test)):
                    body(flag, code)


def _arrays(context: Any, builder: Any, signature: Any, args: Any, which: tuple[int, ...]) -> Any:
    return (context.make_array(signature.args[i])(context, builder, args[i]) for i in which)


def _emit_taps_vector(context: Any, builder: Any, signature: Any, args: Any,
                      broadcast: bool) -> Any:
    """Up to :data:`TAP_VECTORS` vectors of channels of one output pixel of a channels-last
    depthwise convolution: ``acc = bias[k:]``, then for each of ``n`` taps ``acc +=
    xf[at + offs[t] + k:] * tf[tap[t]*c + k:]`` (fused multiply-adds, ``acc`` in registers),
    then the residual, ReLU/ReLU6 and one masked store to ``of[out_at + k:]``; loads and stores
    are masked to the first ``count`` channels (none past them is touched). The code is emitted
    for 4, 2 and 1 vectors, and ``count`` picks one: 32 channels on four vectors wasted half the
    multiply-adds.

    ``broadcast``: ``x`` holds one value per tap (``xf[at + offs[t]]``, the same for every
    channel: a dense convolution of few input channels read from an NCHW input), splat across
    the vectors."""
    v = _Lanes(context, builder, signature.args[0].dtype)
    xa, oa, ta, wa, ba, ra, fa = _arrays(context, builder, signature, args, (0, 2, 3, 5, 7, 8, 12))
    at, n, c, k, has_res, act, out_at, count = (args[1], args[4], args[6], args[9], args[10],
                                                args[11], args[13], args[14])

    def body(vectors: int) -> None:
        masks = v.masks(count, vectors)
        accs = [cgutils.alloca_once(builder, v.vec) for _ in range(vectors)]
        for h, acc in enumerate(accs):
            builder.store(v.load(ba, k, masks[h], h), acc)
        with cgutils.for_range(builder, n) as loop:
            t = loop.index
            x_at = builder.add(at, builder.load(builder.gep(fa.data, [t])))
            w_at = builder.add(builder.mul(builder.load(builder.gep(ta.data, [t])), c), k)
            if broadcast:
                splat = v.splat(builder.load(builder.gep(xa.data, [x_at])), v.vec)
            x_at = builder.add(x_at, k)
            for h, acc in enumerate(accs):
                xv = splat if broadcast else v.load(xa, x_at, masks[h], h)
                builder.store(builder.call(v.fma, [xv, v.load(wa, w_at, masks[h], h),
                                                   builder.load(acc)]), acc)
        o_at = builder.add(out_at, k)
        for h, acc in enumerate(accs):
            v.finish_store(builder.load(acc), ra, o_at, masks[h], has_res, act, oa, h)

    v.by_vectors(count, body)
    return context.get_dummy_value()


def _make_taps(broadcast: bool) -> Any:
    """The intrinsic of :func:`_emit_taps_vector` (splatting ``x`` when ``broadcast``)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return _emit_taps_vector(context, builder, signature, args, broadcast)

    def typer(typingctx: Any, xf: Any, at: Any, of: Any, tap: Any, n: Any, tf: Any, c: Any,
              bias: Any, rf: Any, k: Any, has_res: Any, act: Any, offs: Any, out_at: Any,
              count: Any) -> Any:
        floats = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                     and a.dtype == xf.dtype and a.dtype in (types.float32, types.float64)
                     for a in (xf, of, tf, bias, rf))
        ints = all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64
                   for a in (tap, offs))
        if not (floats and ints and isinstance(has_res, types.Boolean)):
            return None
        i = types.intp
        return (types.void(xf, i, of, tap, i, tf, i, bias, rf, i, has_res, i, offs, i, i),
                codegen)

    typer.__name__ = f"taps_{'broadcast' if broadcast else 'vector'}"
    return intrinsic(typer)


#: ``taps_vector(xf, at, of, tap, n, tf, c, bias, rf, k, has_res, act, offs, out_at, count)``:
#: ``of[out_at + k + l] = act(bias[k + l] + sum over t < n of xf[at + offs[t] + k + l] *
#: tf[tap[t]*c + k + l] (+ rf[out_at + k + l]))`` for ``l < min(count, TAP_VECTORS * lanes)``:
#: a channels-last depthwise convolution's pixel, its taps listed in ``offs``/``tap`` (int64),
#: the sums in registers (:func:`_emit_taps_vector`). 1-D C-contiguous float arrays of one
#: dtype (``rf`` is read only when ``has_res``, but must be as long as ``of``); ``act`` 1
#: ReLU, 2 ReLU6, else none.
taps_vector = _make_taps(False)
#: :data:`taps_vector` with ``xf[at + offs[t]]`` splat across the channels (a dense
#: convolution of few input channels, its input NCHW, its output channels-last).
taps_broadcast = _make_taps(True)


#: Output pixels one :data:`taps_broadcast_run` call computes together.
RUN_PIXELS = 6


def _emit_taps_run(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    """:data:`RUN_PIXELS` consecutive output pixels of a dense convolution of few input channels
    (NCHW in, channels-last out), up to :data:`TAP_VECTORS` vectors of output channels each:
    pixel ``q`` sums ``xf[at + q*step + offs[t]]`` (splat) times the weight row ``tf[tap[t]*c +
    k:]`` over the ``n`` taps, each weight vector loaded once for all the pixels (one pixel at
    a time, two vectors of 32 channels were two chains of dependent multiply-adds: MobileNetV2's
    stem ran at a third of the multiply-add rate). Bias, ReLU/ReLU6 and a masked store to
    ``of[out_at + q*c + k:]`` finish each."""
    v = _Lanes(context, builder, signature.args[0].dtype)
    xa, oa, ta, wa, ba, fa = _arrays(context, builder, signature, args, (0, 2, 3, 5, 7, 10))
    at, n, c, k, act, out_at, count, step = (args[1], args[4], args[6], args[8], args[9],
                                            args[11], args[12], args[13])
    b = builder
    no_res = ir.Constant(ir.IntType(1), 0)

    def body(vectors: int) -> None:
        masks = v.masks(count, vectors)
        bias = [v.load(ba, k, masks[h], h) for h in range(vectors)]
        accs = [[cgutils.alloca_once(b, v.vec) for _ in range(vectors)] for _ in range(RUN_PIXELS)]
        for row in accs:
            for h, acc in enumerate(row):
                b.store(bias[h], acc)
        with cgutils.for_range(b, n) as loop:
            t = loop.index
            x_at = b.add(at, b.load(b.gep(fa.data, [t])))
            w_at = b.add(b.mul(b.load(b.gep(ta.data, [t])), c), k)
            weights = [v.load(wa, w_at, masks[h], h) for h in range(vectors)]
            for q, row in enumerate(accs):
                value = b.load(b.gep(xa.data, [b.add(x_at, b.mul(step, v.const(q)))]))
                splat = v.splat(value, v.vec)
                for h, acc in enumerate(row):
                    b.store(b.call(v.fma, [splat, weights[h], b.load(acc)]), acc)
        for q, row in enumerate(accs):
            o_at = b.add(b.add(out_at, b.mul(c, v.const(q))), k)
            for h, acc in enumerate(row):
                v.finish_store(b.load(acc), oa, o_at, masks[h], no_res, act, oa, h)

    v.by_vectors(count, body)
    return context.get_dummy_value()


@intrinsic
def taps_broadcast_run(typingctx: Any, xf: Any, at: Any, of: Any, tap: Any, n: Any, tf: Any,
                       c: Any, bias: Any, k: Any, act: Any, offs: Any, out_at: Any, count: Any,
                       step: Any) -> Any:
    """``taps_broadcast_run(xf, at, of, tap, n, tf, c, bias, k, act, offs, out_at, count,
    step)``: :data:`taps_broadcast` (no residual) for :data:`RUN_PIXELS` output pixels whose
    windows lie ``step`` input elements apart and whose outputs are ``c`` apart
    (:func:`_emit_taps_run`)."""
    floats = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                 and a.dtype == xf.dtype and a.dtype in (types.float32, types.float64)
                 for a in (xf, of, tf, bias))
    ints = all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64
               for a in (tap, offs))
    if not (floats and ints):
        return None
    i = types.intp
    return types.void(xf, i, of, tap, i, tf, i, bias, i, i, offs, i, i, i), _emit_taps_run


def _emit_taps_row(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    """A run of ``npix`` output pixels of one row of a channels-last depthwise convolution
    whose windows lie inside the map, for one vector of channels (``count`` lanes): the
    ``kh*kh`` tap vectors loaded once, then :data:`ROW_PIXELS` pixels at a time, each input
    column their windows share loaded once, then the epilogue and a masked store, as
    :func:`_emit_taps_vector`. The code is emitted for each ``(kh, sw)`` of
    :data:`ROW_KERNELS` (the shared columns depend on them) and each epilogue
    (:meth:`_Lanes.by_epilogue`), and the arguments pick one."""
    v = _Lanes(context, builder, signature.args[0].dtype)
    xa, wa, ba, ra, oa = _arrays(context, builder, signature, args, (0, 3, 5, 6, 10))
    at, row, c, k, has_res, act, out_at, npix, count, kh_arg, sw_arg = (
        args[1], args[2], args[4], args[7], args[8], args[9], args[11], args[12], args[13],
        args[14], args[15])
    (mask,) = v.masks(count, 1)
    const = v.const

    def body(kh: int, sw: int, res_flag: bool, act_code: int) -> None:
        taps = [v.load(wa, builder.add(builder.mul(const(t), c), k), mask)
                for t in range(kh * kh)]
        bias = v.load(ba, k, mask)

        def pixels(first: Any, q_count: int) -> None:
            """``q_count`` pixels from pixel index ``first`` of the run."""
            x0 = builder.add(builder.add(at, k), builder.mul(builder.mul(first, const(sw)), c))
            accs = [bias] * q_count
            for i in range(kh):
                base = builder.add(x0, builder.mul(row, const(i)))
                columns: dict[int, Any] = {}
                for q in range(q_count):
                    for j in range(kh):
                        m = q * sw + j  # the input column, in pixels from the run's first
                        if m not in columns:
                            columns[m] = v.load(xa, builder.add(base, builder.mul(c, const(m))),
                                                mask)
                        accs[q] = builder.call(v.fma, [columns[m], taps[i * kh + j], accs[q]])
            o0 = builder.add(builder.add(out_at, k), builder.mul(first, c))
            for q in range(q_count):
                v.finish_store_fixed(accs[q], ra, builder.add(o0, builder.mul(c, const(q))),
                                     mask, res_flag, act_code, oa)

        groups = builder.sdiv(npix, const(ROW_PIXELS))
        with cgutils.for_range(builder, groups) as loop:
            pixels(builder.mul(loop.index, const(ROW_PIXELS)), ROW_PIXELS)
        rest = builder.sub(npix, builder.mul(groups, const(ROW_PIXELS)))
        with cgutils.for_range(builder, rest) as loop:
            pixels(builder.add(builder.mul(groups, const(ROW_PIXELS)), loop.index), 1)

    for kh, sw in ROW_KERNELS:
        chosen = builder.and_(builder.icmp_signed("==", kh_arg, const(kh)),
                              builder.icmp_signed("==", sw_arg, const(sw)))
        with builder.if_then(chosen):
            v.by_epilogue(has_res, act, lambda flag, code, kh=kh, sw=sw: body(kh, sw, flag, code))
    return context.get_dummy_value()


@intrinsic
def taps_row(typingctx: Any, xf: Any, at: Any, row: Any, tf: Any, c: Any, bias: Any, rf: Any,
             k: Any, has_res: Any, act: Any, of: Any, out_at: Any, npix: Any, count: Any,
             kh: Any, sw: Any) -> Any:
    """``taps_row(xf, at, row, tf, c, bias, rf, k, has_res, act, of, out_at, npix, count, kh,
    sw)``: ``npix`` output pixels of a channels-last depthwise row of a ``kh x kh`` kernel of
    stride ``sw`` (one of :data:`ROW_KERNELS`; any other does nothing), all windows inside the
    map, the first's window at ``xf[at]`` (``row``: elements between its rows), output pixel
    ``q`` at ``of[out_at + q*c]``, channels ``k .. k + min(count, lanes)``, column dilation 1
    (:func:`_emit_taps_row`); arrays as :data:`taps_vector`'s."""
    floats = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                 and a.dtype == xf.dtype and a.dtype in (types.float32, types.float64)
                 for a in (xf, tf, bias, rf, of))
    if not (floats and isinstance(has_res, types.Boolean)):
        return None
    i = types.intp
    return types.void(xf, i, i, tf, i, bias, rf, i, has_res, i, of, i, i, i, i, i), _emit_taps_row
