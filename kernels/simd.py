"""Register-tiled float32 micro-kernels for numba code, in the CPU's widest vectors.

numba vectorises loops by itself, but only the loop innermost in the source, and on an
AVX-512 CPU only 256 bits wide (LLVM's default preference there, process-wide). A
product shaped like a small GEMM, where every loaded value should serve many
multiply-adds from registers, is out of its reach. :func:`tile` builds that product
directly in LLVM IR: a block of ``rows x vectors`` accumulators held in registers over
the whole reduction, one vector load of ``a`` serving every row, one broadcast of ``b``
serving every vector. The function that calls it is marked to use the widest vectors
(:data:`LANES` float32 lanes: 16 with AVX-512, else 8), so each accumulator is one
register.

It is a building block, shared by any kernel: it knows arrays only as addresses.
Importing it also keys numba's on-disk cache of the attention kernels, which compile
these tiles in, by the vector configuration and this code (:func:`cache_tag`): it has to
happen before their ``cache=True`` functions are defined, and they import this first.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import shutil
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_jitable, register_model


def _host_features() -> set[str]:
    try:
        import llvmlite.binding as ll

        return set(ll.get_host_cpu_features().flatten().split(","))
    except (ImportError, RuntimeError):
        return set()


def _host_has_avx512() -> bool:
    return "+avx512f" in _host_features()


def features_without_avx512() -> str:
    """This CPU's LLVM features with AVX-512 and what needs its encoding (AVX10, AMX)
    turned off, as ``NUMBA_CPU_FEATURES`` takes them. With it and
    ``KERNELRACE_SIMD_LANES=8``, numba compiles here the code an AVX2 CPU runs: 16
    ``ymm`` registers (``KERNELRACE_SIMD_LANES=8`` alone keeps AVX-512's 32 and its
    encodings), the ``vpmaddwd`` integer tiles, no ``vdpbf16ps``. docs/attention.md
    ("AVX2 code on an AVX-512 CPU") says how close its speed comes to an AVX2 CPU's."""
    off = ("avx512", "avx10", "evex512", "amx")
    return ",".join("-" + f[1:] if f.startswith("+") and any(o in f for o in off) else f
                    for f in sorted(_host_features()) if f)


def _lanes() -> int:
    """16 with AVX-512, else 8; ``KERNELRACE_SIMD_LANES=8`` (or 16) chooses, so that the
    8-lane kernels (an AVX2 CPU's) can be run and tested on an AVX-512 one."""
    forced = os.environ.get("KERNELRACE_SIMD_LANES", "").strip()
    if forced:
        if forced not in ("8", "16"):
            raise ValueError(f"KERNELRACE_SIMD_LANES must be 8 or 16, got {forced!r}")
        return int(forced)
    return 16 if _host_has_avx512() else 8


#: float32 lanes in one vector register: 16 with AVX-512 (zmm), else 8 (ymm; LLVM splits
#: or narrows them where the CPU has less).
LANES = _lanes()

#: Vector registers the CPU has for accumulators and operands (32 zmm with AVX-512,
#: 16 ymm with AVX2).
REGISTERS = 32 if LANES == 16 else 16


def _compiles_with(feature: str, switch: str) -> bool:
    """Whether numba's code here can use the CPU ``feature`` (``"+avx512vnni"``, say):
    this CPU has it, numba compiles for this CPU (not ``NUMBA_CPU_NAME=generic``, nor
    ``NUMBA_CPU_FEATURES`` without it), and the environment variable ``switch`` is not
    ``0`` (which keeps the other path, to run and test it on such a CPU)."""
    from numba.core import config

    if os.environ.get(switch, "").strip() == "0":
        return False
    if config.CPU_NAME not in (None, "", "host"):
        return False
    if config.CPU_FEATURES and feature not in str(config.CPU_FEATURES).split(","):
        return False
    return feature in _host_features()


def _vnni() -> bool:
    """Whether the int8 tiles can use ``vpdpwssd``: AVX-512 VNNI at 16 lanes, unless
    ``KERNELRACE_VNNI=0`` (to run and test the ``vpmaddwd`` tiles on a VNNI CPU)."""
    return LANES == 16 and _compiles_with("+avx512vnni", "KERNELRACE_VNNI")


#: AVX-512 VNNI (``vpdpwssd``: 32 int16 products summed in pairs into 16 int32 lanes, one
#: instruction) is there for the int8 tiles of :func:`int_dots` and :func:`int_values`.
VNNI = _vnni()


def _int_madd() -> str:
    """The integer multiply-add of the int8 tiles (:func:`int_dots`, :func:`int_values`):
    ``"vnni"`` (:data:`VNNI`), ``"pmaddwd"`` (``vpmaddwd`` and an add: AVX2 at 8 lanes,
    AVX-512BW at 16), or ``""``: none, the int8 caches stay in float tiles (numba
    compiling for another CPU, or ``KERNELRACE_INT_TILES=0``, which keeps the float tiles
    for running and testing them on any CPU)."""
    if os.environ.get("KERNELRACE_INT_TILES", "").strip() == "0":
        return ""
    if VNNI:
        return "vnni"
    need = "+avx512bw" if LANES == 16 else "+avx2"
    return "pmaddwd" if _compiles_with(need, "KERNELRACE_INT_TILES") else ""


#: How the int8 tiles multiply and add in integers here (:func:`_int_madd`); ``""``: they
#: are not used.
INT_MADD = _int_madd()

#: Whether :func:`int_dots` takes its query in int8 bytes: with VNNI (``vpdpbusd``: 4
#: LANES byte products a vector, twice ``vpdpwssd``'s int16 pairs), unless
#: ``KERNELRACE_INT8_QUERY=0``, which keeps the query in int16 (2^-16 of its largest
#: element instead of 2^-8; docs/attention.md gives both errors and speeds).
QUERY_BYTES = INT_MADD == "vnni" and os.environ.get("KERNELRACE_INT8_QUERY", "").strip() != "0"

#: :data:`INT_MADD` in words, for the calibration and the report.
INT_MADD_WORDS = {"vnni": "integers (AVX-512 VNNI)",
                  "pmaddwd": f"integers ({'AVX-512BW' if LANES == 16 else 'AVX2'} vpmaddwd)",
                  "": "float tiles"}[INT_MADD]

#: How the int8 scores run, in words: :data:`INT_MADD_WORDS` and, with VNNI, the query's
#: integer type (:data:`QUERY_BYTES`), which their speed and accuracy depend on.
INT_SCORES_WORDS = (f"integers (AVX-512 VNNI, {'int8' if QUERY_BYTES else 'int16'} query)"
                    if INT_MADD == "vnni" else INT_MADD_WORDS)


def _bf16_dot() -> bool:
    """Whether bfloat16 caches use ``vdpbf16ps`` (:func:`bf16_dots`, :func:`bf16_values`):
    AVX-512 BF16 at 16 lanes, unless ``KERNELRACE_BF16_DOT=0`` (which keeps the float
    tiles, whose only rounding is the cache's own)."""
    return LANES == 16 and _compiles_with("+avx512bf16", "KERNELRACE_BF16_DOT")


#: AVX-512 BF16 (``vdpbf16ps``: 32 bfloat16 products summed in pairs into 16 float32
#: lanes, one instruction, twice a float32 FMA's products) computes the bfloat16 caches'
#: scores and value sums, with the query and the softmax weights rounded to bfloat16 as
#: the cache is (docs/attention.md, "bfloat16 products").
BF16_DOT = _bf16_dot()


#: Source files whose code the attention kernels compile into their own (the tiles here,
#: the chunk kernels and merge that ``wide`` calls, the call by address of the driver).
_CACHE_DEPENDS = (__file__, os.path.join(os.path.dirname(__file__), "attention", "jit.py"),
                  os.path.join(os.path.dirname(__file__), "native.py"))


@functools.cache
def cache_tag() -> str:
    """What numba's on-disk cache of the attention kernels must also match: the vector
    configuration (:data:`LANES`, :data:`INT_MADD`, :data:`BF16_DOT`) and a hash of
    :data:`_CACHE_DEPENDS`. numba stamps a cached function with its own source file only,
    so without this a changed tile here, or ``KERNELRACE_SIMD_LANES`` /
    ``KERNELRACE_VNNI`` / ``KERNELRACE_INT_TILES`` / ``KERNELRACE_INT8_QUERY`` /
    ``KERNELRACE_BF16_DOT`` set differently, would load code compiled for the old one."""
    digest = hashlib.sha256()
    for path in _CACHE_DEPENDS:
        with open(path, "rb") as f:
            digest.update(f.read())
    return (f"simd{LANES}{'-' + INT_MADD if INT_MADD else ''}"
            f"{'-q16' if INT_MADD == 'vnni' and not QUERY_BYTES else ''}"
            f"{'-bf16' if BF16_DOT else ''}-{digest.hexdigest()[:16]}")


_TAG = re.compile(r"simd(8|16)(-vnni|-pmaddwd)?(-q16)?(-bf16)?-([0-9a-f]{16})")


@functools.cache
def _prune_stale(parent: str) -> None:
    """Remove the cache folders in ``parent`` that earlier versions of the code left
    (their :func:`cache_tag` hash is not this code's): nothing would load them again,
    and each holds a few MB of compiled kernels. Folders of this code in another vector
    configuration stay. Once per folder and process; a folder that cannot be removed (in
    use, read-only) is left."""
    current = cache_tag().rsplit("-", 1)[1]
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = _TAG.fullmatch(name)
        if match and match.group(5) != current:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


#: numba's locators the attention kernels' cache goes through, in numba's order:
#: ``NUMBA_CACHE_DIR``, the package's ``__pycache__``, and the user-wide cache numba
#: falls back to where the package folder is read-only.
_WRAPPED_LOCATORS = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")


def _register_cache_locators() -> None:
    """Put the attention kernels' cache in a folder named by :func:`cache_tag` (beside
    numba's usual place: ``NUMBA_CACHE_DIR``, ``__pycache__`` or the user-wide cache of
    a read-only install), so that each vector configuration and each version of the
    code they compile in has entries of its own.
    Through numba's locator list (``CacheImpl._locator_classes``, ``_CacheImpl`` in
    older versions); where a numba version lacks it, the cache stays numba's own."""
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover
        return
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    bases = [getattr(caching, name, None) or getattr(caching, "_" + name, None)
             for name in _WRAPPED_LOCATORS]
    bases = [b for b in bases if b is not None]
    if impl is None or not bases or not isinstance(getattr(impl, "_locator_classes", None),
                                                   list):
        return
    ours = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attention") + os.sep

    def make(base: Any) -> type:
        class Locator(base):  # type: ignore[misc, valid-type]
            def get_cache_path(self) -> str:
                parent = super().get_cache_path()
                _prune_stale(parent)
                return os.path.join(parent, cache_tag())

            @classmethod
            def from_function(cls, py_func: Any, py_file: str) -> Any:
                if not os.path.abspath(py_file).startswith(ours):
                    return None
                return super().from_function(py_func, py_file)

        Locator.__name__ = Locator.__qualname__ = f"Kernelrace{base.__name__.lstrip('_')}"
        return Locator

    if not any(c.__name__.startswith("Kernelrace") for c in impl._locator_classes):
        impl._locator_classes[:0] = [make(b) for b in bases]


_register_cache_locators()

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def _vec() -> ir.VectorType:
    return ir.VectorType(_F32, LANES)


def _mark_widest(builder: ir.IRBuilder) -> None:
    """Let the function being built use :data:`LANES`-wide vectors, whatever numba's
    process-wide preference (on AVX-512 LLVM otherwise splits 512-bit vectors in two).
    Every intrinsic here calls it, so any numba function that uses one is marked; one
    with plain loops calls :func:`widest`."""
    attrs = builder.function.attributes
    for attr in ('"prefer-vector-width"="512"', '"min-legal-vector-width"="512"'):
        set.add(attrs, attr)  # string attributes; llvmlite's add() knows only keywords


@intrinsic
def widest(typingctx: Any) -> Any:  # noqa: ARG001
    """Mark the numba function that calls it to vectorise with :data:`LANES`-wide
    vectors (its own loops too, not only the tiles); compiles to nothing."""

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
        _mark_widest(builder)
        return context.get_dummy_value()

    return types.void(), codegen


def _pointer(builder: ir.IRBuilder, addr: ir.Value, index: ir.Value, ty: ir.Type) -> ir.Value:
    """Pointer to element ``index`` (float32s) past byte address ``addr``, as ``ty*``."""
    base = builder.inttoptr(addr, _F32.as_pointer())
    return builder.bitcast(builder.gep(base, [index]), ty.as_pointer())


class _Vector(types.Type):
    """A float32 vector of :data:`LANES` lanes, as a value in numba code (in a register
    once LLVM is done)."""

    def __init__(self) -> None:
        super().__init__(name=f"f32x{LANES}")


vector = _Vector()


@register_model(_Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: Any) -> None:
        super().__init__(dmm, fe_type, _vec())


def _unary(name: str, doc: str, build: Any, arg: Any = vector) -> Any:
    def typer(typingctx: Any, x: Any) -> Any:  # noqa: ARG001
        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
            _mark_widest(builder)
            return build(builder, args[0])

        return vector(arg), codegen

    typer.__name__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


def _binary(name: str, doc: str, build: Any) -> Any:
    def typer(typingctx: Any, x: Any, y: Any) -> Any:  # noqa: ARG001
        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
            _mark_widest(builder)
            return build(builder, args[0], args[1])

        return vector(vector, vector), codegen

    typer.__name__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


def _call(builder: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
    fnty = ir.FunctionType(_vec(), [_vec()] * len(args))
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{name}.v{LANES}f32")
    return builder.call(fn, list(args))


def _splat(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    v = builder.insert_element(ir.Constant(_vec(), ir.Undefined), x, _I32(0))
    mask = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
    return builder.shuffle_vector(v, v, mask)


def _load(builder: ir.IRBuilder, addr: ir.Value) -> ir.Value:
    return builder.load(builder.inttoptr(addr, _vec().as_pointer()), align=4)


load = _unary("load", "The vector at byte address ``addr`` (any alignment).", _load,
              types.uintp)
splat = _unary("splat", "``x`` in every lane.", _splat, types.float32)
vmax = _binary("vmax", "Lane-wise maximum.", lambda b, x, y: _call(b, "maxnum", x, y))
add = _binary("add", "Lane-wise sum.", lambda b, x, y: b.fadd(x, y))
mul = _binary("mul", "Lane-wise product.", lambda b, x, y: b.fmul(x, y))
sub = _binary("sub", "Lane-wise difference.", lambda b, x, y: b.fsub(x, y))


def _widen_vector(builder: ir.IRBuilder, addr: ir.Value, like: Any) -> ir.Value:
    """The LANES elements of type ``like`` at byte address ``addr`` as float32."""
    n = LANES
    if like == types.float32:
        return _load(builder, addr)
    if like == types.float64:  # typed for generic callers; rounded, never fast
        vt = ir.VectorType(ir.DoubleType(), n)
        return builder.fptrunc(builder.load(builder.inttoptr(addr, vt.as_pointer()), align=8),
                               _vec())
    bits = 8 if like == types.int8 else 16
    raw_t = ir.VectorType(ir.IntType(bits), n)
    raw = builder.load(builder.inttoptr(addr, raw_t.as_pointer()), align=1)
    if like == types.int8:
        return builder.sitofp(raw, _vec())
    if like == types.int16:
        return builder.fpext(builder.bitcast(raw, ir.VectorType(ir.HalfType(), n)), _vec())
    wide = builder.shl(builder.zext(raw, ir.VectorType(_I32, n)),
                       ir.Constant(ir.VectorType(_I32, n), [16] * n))
    return builder.bitcast(wide, _vec())


@intrinsic
def load_as_float(typingctx: Any, addr: Any, like: Any) -> Any:  # noqa: ARG001
    """The :data:`LANES` elements at byte address ``addr``, of the type of ``like`` (a
    scalar of the array read), as float32: float32 as is; uint16 as bfloat16 bits
    (shifted into the top half); int16 as float16 bits (``vcvtph2ps``); int8 converted."""
    if like not in (types.float32, types.uint16, types.int16, types.int8):
        return None

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
        _mark_widest(builder)
        return _widen_vector(builder, args[0], like)

    return vector(types.uintp, like), codegen


@intrinsic
def store(typingctx: Any, addr: Any, v: Any) -> Any:  # noqa: ARG001
    """Store vector ``v`` at byte address ``addr`` (any alignment)."""

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
        _mark_widest(builder)
        builder.store(args[1], builder.inttoptr(args[0], _vec().as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(types.uintp, vector), codegen


#: The degree-7 Taylor coefficients of 2**z, ln(2)**k / k! (used as float32). Estrin's scheme
#: (z**2 and z**4, four pairs, two levels of multiply-adds) has a dependency chain of four
#: multiply-adds where Horner's has seven: the exponentials of a block of scores are
#: then less bound by latency (AVX2's 16 registers hold few of them at once). MQA's
#: softmax block (32 heads, 128 tokens) took 0.67x the time, with
#: :func:`kernels.attention.wide._softmax_block`'s other changes (AMD EPYC Zen 2).
EXP2_TAYLOR = tuple(math.log(2) ** k / math.factorial(k) for k in range(8))


def _exp_nonpositive(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e**x lane-wise for x <= 0: ``2**r * P(z)``, ``y = x / ln 2``, ``r = round(y)``,
    ``z = y - r``, P the degree-7 Taylor polynomial of 2**z on |z| <= 1/2 (relative
    error about 1e-8), evaluated in Estrin's scheme (:data:`EXP2_TAYLOR`); lanes below
    -64 ln 2 give exactly 0 (as :func:`kernels.attention.jit._exp_neg`)."""
    def const(v: float) -> ir.Constant:
        return ir.Constant(_vec(), [v] * LANES)

    def fma(a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        return _call(builder, "fma", a, b, c)

    y = builder.fmul(x, const(1.4426950408889634))
    low = builder.fcmp_ordered("<", y, const(-64.0))
    y = builder.select(low, const(-127.0), y)
    r = _call(builder, "floor", builder.fadd(y, const(0.5)))
    z = builder.fsub(y, r)
    c = [const(v) for v in EXP2_TAYLOR]
    z2 = builder.fmul(z, z)
    z4 = builder.fmul(z2, z2)
    lo = fma(fma(z, c[3], c[2]), z2, fma(z, c[1], c[0]))
    hi = fma(fma(z, c[7], c[6]), z2, fma(z, c[5], c[4]))
    p = fma(hi, z4, lo)
    ivec = ir.VectorType(_I32, LANES)
    bits = builder.shl(builder.add(builder.fptosi(r, ivec), ir.Constant(ivec, [127] * LANES)),
                       ir.Constant(ivec, [23] * LANES))
    return builder.fmul(p, builder.bitcast(bits, _vec()))


exp_nonpositive = _unary("exp_nonpositive", _exp_nonpositive.__doc__, _exp_nonpositive)


def _horizontal(name: str, doc: str, combine: Any) -> Any:
    def typer(typingctx: Any, x: Any) -> Any:  # noqa: ARG001
        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
            _mark_widest(builder)
            v = args[0]
            width = LANES
            while width > 1:  # fold the upper half onto the lower
                width //= 2
                mask = ir.Constant(ir.VectorType(_I32, LANES),
                                   [width + (j % width) for j in range(LANES)])
                v = combine(builder, v, builder.shuffle_vector(v, v, mask))
            return builder.extract_element(v, _I32(0))

        return types.float32(vector), codegen

    typer.__name__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


def _max_select(builder: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return builder.select(builder.fcmp_ordered(">", x, y), x, y)


hmax = _horizontal("hmax", "The largest lane, as a float32 (lanes are not NaN).",
                   _max_select)
vmax_fast = _binary("vmax_fast", "Lane-wise maximum of lanes that are not NaN (one "
                    "``vmaxps``).", _max_select)


@intrinsic
def zero(typingctx: Any) -> Any:  # noqa: ARG001
    """The vector of zeros."""

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
        _mark_widest(builder)
        return ir.Constant(_vec(), None)

    return vector(), codegen


def _prefetch(builder: ir.IRBuilder, addr: ir.Value) -> None:
    """``llvm.prefetch`` of the line at byte address ``addr`` into L2 (read, locality 1:
    ``prefetcht2`` on x86)."""
    ptr_t = ir.IntType(8).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [ptr_t, _I32, _I32, _I32])
    fn = builder.module.declare_intrinsic("llvm.prefetch", [ptr_t], fnty)
    builder.call(fn, [builder.inttoptr(addr, ptr_t), _I32(0), _I32(1), _I32(1)])


def tile_registers(rows: int, vectors: int) -> int:
    """Vector registers a ``rows`` x ``vectors`` tile of :func:`tile`,
    :func:`widening_tile` or :func:`int_values` takes: its accumulators, a row's vectors
    of ``a`` and one broadcast."""
    return rows * vectors + vectors + 1


def dot_registers(rows: int, cols: int) -> int:
    """Vector registers a ``rows`` x ``cols`` tile of :func:`dots` or :func:`int_dots`
    takes: an accumulator per product and an operand per row and per column."""
    return rows * cols + rows + cols


def _check_tile(rows: int, vectors: int) -> None:
    if rows < 1 or vectors < 1 or tile_registers(rows, vectors) > REGISTERS:
        raise ValueError(f"a {rows} x {vectors} tile does not fit in {REGISTERS} registers")


def _tile_codegen(rows: int, vectors: int, widening: bool) -> Any:
    """The code of :func:`tile` (``widening``: of :func:`widening_tile`, whose ``a`` is
    of the type of its second argument and is widened as it is loaded, and which
    prefetches as many lines per step as the step reads of ``a``)."""

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
        _mark_widest(builder)
        if widening:
            a, _like, lda, b, ldb_r, ldb_i, k, c, ldc, add, pf, npf = args
            like = signature.args[1]
        else:
            a, lda, b, ldb_r, ldb_i, k, c, ldc, add, pf, npf = args
            like = types.float32
        size = _I64(like.bitwidth // 8)
        per = prefetch_lines(vectors, like.bitwidth // 8) if widening else 1
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(_vec(), None))
                 for _ in range(vectors)] for _ in range(rows)]
        with cgutils.for_range(builder, k) as loop:
            i = loop.index
            for u in range(per):
                line = builder.add(builder.mul(i, _I64(per)), _I64(u))
                with builder.if_then(builder.icmp_signed("<", line, npf), likely=True):
                    _prefetch(builder, builder.add(pf, builder.mul(line, _I64(64))))
            arow = builder.mul(i, lda)
            avs = [_widen_vector(builder, builder.add(
                a, builder.mul(builder.add(arow, _I64(j * LANES)), size)), like)
                for j in range(vectors)]
            bcol = builder.mul(i, ldb_i)
            for r in range(rows):
                idx = builder.add(bcol, builder.mul(_I64(r), ldb_r))
                x = _splat(builder, builder.load(_pointer(builder, b, idx, _F32), align=4))
                for j in range(vectors):
                    acc = accs[r][j]
                    builder.store(_call(builder, "fma", avs[j], x, builder.load(acc)), acc)
        for r in range(rows):
            crow = builder.mul(_I64(r), ldc)
            for j in range(vectors):
                ptr = _pointer(builder, c, builder.add(crow, _I64(j * LANES)), _vec())
                total = builder.load(accs[r][j])
                old = builder.load(ptr, align=4)
                builder.store(builder.select(add, builder.fadd(old, total), total), ptr,
                              align=4)
        return context.get_dummy_value()

    return codegen


_TILE_TAIL = (types.intp, types.uintp, types.intp, types.intp, types.intp, types.uintp,
              types.intp, types.boolean, types.uintp, types.intp)


@functools.cache
def tile(rows: int, vectors: int) -> Any:
    """The micro-kernel for a block of ``rows`` x ``vectors`` accumulators.

    ``tile(a, lda, b, ldb_r, ldb_i, k, c, ldc, add, pf, npf)``, every argument an
    integer (addresses in bytes, strides in float32 elements), computes for
    ``r < rows`` and the ``vectors * LANES`` columns ``j``::

        c[r * ldc + j] = (c[r * ldc + j] if add else 0)
                         + sum over i < k of b[r * ldb_r + i * ldb_i] * a[i * lda + j]

    ``a``, ``b`` and ``c`` are the byte addresses of float32 data the caller keeps
    alive; rows of ``a`` and ``c`` need no alignment. While it computes, it asks for the
    ``npf`` cache lines from address ``pf`` on into L2 (one per step of ``i``; a hint,
    which never faults): the caller names the data of its next tiles, so that memory
    streams in beside the arithmetic instead of stalling it. Call it from a numba
    function compiled with ``nogil``; the call is inlined and marks that function to
    use the widest vectors.
    """
    _check_tile(rows, vectors)

    def typer(typingctx: Any, a: Any, lda: Any, b: Any, ldb_r: Any, ldb_i: Any, k: Any,  # noqa: ARG001, PLR0913
              c: Any, ldc: Any, add: Any, pf: Any, npf: Any) -> Any:
        return types.void(types.uintp, *_TILE_TAIL), _tile_codegen(rows, vectors, False)

    typer.__name__ = f"tile_{rows}x{vectors}"
    return intrinsic(typer)


@register_jitable
def prefetch_lines(vectors: int, itemsize: int) -> int:
    """Cache lines a :func:`widening_tile` of ``vectors`` vectors prefetches per step:
    as many as the step reads of ``a`` (elements of ``itemsize`` bytes), so that a
    caller naming the next block's rows keeps its reads that far ahead; an
    :func:`int_values` step (two tokens of int8) reads as much as ``itemsize`` 2.
    Callable from numba code too."""
    return (vectors * LANES * itemsize + 63) // 64


@functools.cache
def widening_tile(rows: int, vectors: int) -> Any:
    """:func:`tile` whose ``a`` holds elements of the type of ``like`` (a scalar of the
    array read: float32, or bf16/fp16/int8 bits), widened to float32 as they are loaded
    (:func:`load_as_float`): ``widening_tile(a, like, lda, b, ...)``, ``lda`` in
    elements of that type. A narrow cache's rows go straight into the multiply-adds,
    without a float32 copy. It prefetches :func:`prefetch_lines` lines per step (of
    the ``npf`` from ``pf``), not one."""
    _check_tile(rows, vectors)

    def typer(typingctx: Any, a: Any, like: Any, lda: Any, b: Any, ldb_r: Any, ldb_i: Any,  # noqa: ARG001, PLR0913
              k: Any, c: Any, ldc: Any, add: Any, pf: Any, npf: Any) -> Any:
        if like not in (types.float32, types.uint16, types.int16, types.int8):
            return None
        return types.void(types.uintp, like, *_TILE_TAIL), _tile_codegen(rows, vectors, True)

    typer.__name__ = f"widening_tile_{rows}x{vectors}"
    return intrinsic(typer)


def _reduce_tree(builder: ir.IRBuilder, vs: list[ir.Value],
                 combine: Any = ir.IRBuilder.fadd, k: int = 1) -> list[ir.Value]:
    """Horizontal sums of many vectors at once: pairs of vectors are folded into one
    holding half as many partial sums of each, until every lane is one vector's total.
    16 vectors of 16 lanes take 15 folds (two shuffles and an add each) instead of 16
    separate reductions of 8 operations. Returns the totals, LANES per vector, in the
    order of ``vs``. ``combine`` adds two vectors (``fadd``; ``add`` for integers). ``k``:
    accumulators per vector to begin with (2: each vector holds two totals' partial sums
    in its halves), so that ``len(vs) * k / LANES`` vectors of totals come out."""
    n = LANES  # k: accumulators per vector; each has n // k contiguous partial lanes
    while len(vs) > 1 and k < n:
        p = n // k
        lo = [j * p + m for j in range(k) for m in range(p // 2)]
        hi = [j * p + p // 2 + m for j in range(k) for m in range(p // 2)]
        out = []
        for a, b in zip(vs[0::2], vs[1::2], strict=True):
            mask_lo = ir.Constant(ir.VectorType(_I32, n), lo + [n + i for i in lo])
            mask_hi = ir.Constant(ir.VectorType(_I32, n), hi + [n + i for i in hi])
            out.append(combine(builder, builder.shuffle_vector(a, b, mask_lo),
                               builder.shuffle_vector(a, b, mask_hi)))
        vs = out
        k *= 2
    return vs


@functools.cache
def dots(rows: int, cols: int) -> Any:
    """The micro-kernel of ``rows`` x ``cols`` dot products over whole vectors.

    ``dots(q, ldq, k, ldk, like, d, s, lds, add, sc, scaled)`` computes, for ``r < rows``
    and ``c < cols``::

        s[r * lds + c] = (s[r * lds + c] if add else 0) + (sc[c] if scaled else 1)
                         * sum over i < d of q[r * ldq + i] * k[c * ldk + i]

    ``q`` (float32 rows), ``k`` (rows of ``like``'s type: float32, or bf16/fp16/int8 bits,
    widened as :func:`load_as_float`) and ``s`` (float32) are byte addresses, strides in
    elements; ``d`` a multiple of LANES. Each product keeps a vector accumulator over
    ``d``; the ``rows * cols`` horizontal sums are then folded together
    (:func:`_reduce_tree`). ``rows * cols`` must be a multiple of LANES or LANES of it.
    """
    total = rows * cols
    if total % LANES and LANES % total:
        raise ValueError(f"{rows} x {cols} dot products do not fold into {LANES} lanes")
    if dot_registers(rows, cols) > REGISTERS:
        raise ValueError(f"a {rows} x {cols} dot tile does not fit in {REGISTERS} registers")

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
        _mark_widest(builder)
        q, ldq, k, ldk, _like, d, s, lds, add, sc, scaled = args
        like = signature.args[4]
        size = _I64(like.bitwidth // 8)
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(_vec(), None))
                 for _ in range(cols)] for _ in range(rows)]
        steps = builder.sdiv(d, _I64(LANES))
        with cgutils.for_range(builder, steps) as loop:
            i = builder.mul(loop.index, _I64(LANES))
            qs = [builder.load(_pointer(builder, q, builder.add(builder.mul(_I64(r), ldq), i),
                                        _vec()), align=4) for r in range(rows)]
            ks = [_widen_vector(builder, builder.add(
                k, builder.mul(builder.add(builder.mul(_I64(c), ldk), i), size)), like)
                for c in range(cols)]
            for r in range(rows):
                for c in range(cols):
                    acc = accs[r][c]
                    builder.store(_call(builder, "fma", qs[r], ks[c], builder.load(acc)), acc)
        flat = [builder.load(accs[r][c]) for r in range(rows) for c in range(cols)]
        sums = _reduce_tree(builder, flat)
        per = LANES if total >= LANES else total
        for index in range(total):
            r, c = divmod(index, cols)
            vec, lane = divmod(index, per)
            val = builder.extract_element(sums[vec], _I32(lane * (LANES // per)))
            if per < LANES:  # fewer products than lanes: their partials are still apart
                parts = [builder.extract_element(sums[vec], _I32(lane * (LANES // per) + j))
                         for j in range(1, LANES // per)]
                for part in parts:
                    val = builder.fadd(val, part)
            scale_ptr = _pointer(builder, sc, _I64(c), _F32)
            with builder.if_else(scaled) as (yes, no):
                with yes:
                    scaled_val = builder.fmul(val, builder.load(scale_ptr, align=4))
                    yes_block = builder.block
                with no:
                    no_block = builder.block
            phi = builder.phi(_F32)
            phi.add_incoming(scaled_val, yes_block)
            phi.add_incoming(val, no_block)
            out = _pointer(builder, s, builder.add(builder.mul(_I64(r), lds), _I64(c)), _F32)
            old = builder.load(out, align=4)
            builder.store(builder.select(add, builder.fadd(old, phi), phi), out, align=4)
        return context.get_dummy_value()

    def typer(typingctx: Any, q: Any, ldq: Any, k: Any, ldk: Any, like: Any, d: Any,  # noqa: ARG001, PLR0913
              s: Any, lds: Any, add: Any, sc: Any, scaled: Any) -> Any:
        if like not in (types.float32, types.float64, types.uint16, types.int16, types.int8):
            return None
        sig = types.void(types.uintp, types.intp, types.uintp, types.intp, like, types.intp,
                         types.uintp, types.intp, types.boolean, types.uintp, types.boolean)
        return sig, codegen

    typer.__name__ = f"dots_{rows}x{cols}"
    return intrinsic(typer)


#: The widest reduction :func:`int_dots` sums without overflowing int32.
INT_DOTS_MAX_D = 512

#: The query's largest integer in :func:`int_dots` (int8 or int16, symmetric), and the
#: elements :func:`int_dots` takes a step (``d`` must be a multiple).
INT_QUERY_MAX = 127 if QUERY_BYTES else 32767
INT_DOTS_STEP = (4 if QUERY_BYTES else 2) * LANES

#: One vector of int16 (2 LANES of them), of int8 (as many, loaded to be widened), of
#: int32 (LANES) and of bytes (4 LANES, as ``vpdpbusd`` takes them).
_V16 = ir.VectorType(ir.IntType(16), 2 * LANES)
_V8 = ir.VectorType(ir.IntType(8), 2 * LANES)
_VI32 = ir.VectorType(_I32, LANES)
_V64 = ir.VectorType(ir.IntType(8), 4 * LANES)


def _madd(builder: ir.IRBuilder, acc: ir.Value, x: ir.Value, y: ir.Value) -> ir.Value:
    """acc + the int16 products x * y summed in pairs (int32 lane j gets x[2j] y[2j] +
    x[2j+1] y[2j+1]): one ``vpdpwssd`` with VNNI, else ``vpmaddwd`` and an add."""
    if INT_MADD == "vnni":
        fnty = ir.FunctionType(_VI32, [_VI32, _V16, _V16])
        return builder.call(builder.module.declare_intrinsic(
            "llvm.x86.avx512.vpdpwssd.512", (), fnty), [acc, x, y])
    name = "llvm.x86.avx512.pmaddw.d.512" if LANES == 16 else "llvm.x86.avx2.pmadd.wd"
    fnty = ir.FunctionType(_VI32, [_V16, _V16])
    return builder.add(acc, builder.call(builder.module.declare_intrinsic(name, (), fnty),
                                         [x, y]))


def _dpbusd(builder: ir.IRBuilder, acc: ir.Value, u: ir.Value, x: ir.Value) -> ir.Value:
    """acc + the products of the unsigned bytes u and the signed bytes x summed in fours
    (int32 lane j gets u[4j] x[4j] + ... + u[4j+3] x[4j+3]): one ``vpdpbusd`` (VNNI). u
    and x are 4 LANES bytes as LANES int32, the intrinsic's signature."""
    fnty = ir.FunctionType(_VI32, [_VI32, _VI32, _VI32])
    return builder.call(builder.module.declare_intrinsic(
        "llvm.x86.avx512.vpdpbusd.512", (), fnty), [acc, u, x])


def _dpbf16(builder: ir.IRBuilder, acc: ir.Value, x: ir.Value, y: ir.Value) -> ir.Value:
    """acc + the bfloat16 products x * y summed in pairs (float32 lane j gets x[2j] y[2j]
    + x[2j+1] y[2j+1]): one ``vdpbf16ps``. x and y hold bfloat16 bits as int16; LLVM
    takes the intrinsic's older integer signature and casts it to its bfloat one."""
    fnty = ir.FunctionType(_vec(), [_vec(), _VI32, _VI32])
    fn = builder.module.declare_intrinsic("llvm.x86.avx512bf16.dpbf16ps.512", (), fnty)
    return builder.call(fn, [acc, builder.bitcast(x, _VI32), builder.bitcast(y, _VI32)])


def _need_pairs(kind: str, what: str, ok: bool) -> None:
    """Refuse a tile that does not fit, or one this CPU cannot run (``kind`` "int8":
    :data:`INT_MADD`; "bf16": :data:`BF16_DOT`)."""
    here = INT_MADD if kind == "int8" else BF16_DOT
    if not ok or not here:
        lack = {"int8": " (no integer multiply-add here)", "bf16": " (no vdpbf16ps here)"}
        raise ValueError(f"{what}{'' if here else lack[kind]}")


class _Pairs:
    """What the pair tiles (:func:`int_dots`, :func:`int_values`, :func:`bf16_dots`,
    :func:`bf16_values`) do differently per kind: how a stored vector of 2 LANES elements
    is loaded as 2 LANES int16 (int8 sign-extended; bfloat16 bits as they are), the
    accumulators' type, the multiply-add of pairs, and how a sum becomes float32."""

    def __init__(self, kind: str, *, query: bool = False) -> None:
        self.int8 = kind == "int8"
        self.acc = _VI32 if self.int8 else _vec()
        #: ``query``: the dot tiles' operands, where an int8 query meets int8 keys in bytes
        #: (:data:`QUERY_BYTES`): the keys offset to unsigned (``x ^ 0x80`` = x + 128)
        #: for ``vpdpbusd``, 4 LANES elements a step; the offset's 128 x sum(query) is
        #: taken off each total by the tile.
        self.bytes = self.int8 and query and QUERY_BYTES
        self.step = (4 if self.bytes else 2) * LANES

    def load(self, builder: ir.IRBuilder, addr: ir.Value, addr2: ir.Value | None = None
             ) -> ir.Value:
        """A vector of stored elements at ``addr``; for byte tiles with ``addr2``, the first
        half from ``addr`` and the second from ``addr2`` (two tokens: one
        ``vinserti64x4`` from memory)."""
        if self.bytes:
            if addr2 is None:
                x = builder.load(builder.inttoptr(addr, _V64.as_pointer()), align=1)
            else:
                a, b = (builder.load(builder.inttoptr(x, _V8.as_pointer()), align=1)
                        for x in (addr, addr2))
                x = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 4 * LANES),
                                                             list(range(4 * LANES))))
            return builder.bitcast(builder.xor(x, ir.Constant(_V64, [0x80] * (4 * LANES))),
                                   _VI32)
        ty = _V8 if self.int8 else _V16
        x = builder.load(builder.inttoptr(addr, ty.as_pointer()), align=1 if self.int8 else 2)
        return builder.sext(x, _V16) if self.int8 else x

    def load_query(self, builder: ir.IRBuilder, addr: ir.Value, packed: int = 1) -> ir.Value:
        """A step of the query: 4 LANES bytes (as LANES int32) or 2 LANES int16; with
        ``packed`` 2, 2 LANES bytes loaded once into both halves."""
        if self.bytes and packed == 2:
            x = builder.load(builder.inttoptr(addr, _V8.as_pointer()), align=1)
            x = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, 4 * LANES),
                                                         list(range(2 * LANES)) * 2))
            return builder.bitcast(x, _VI32)
        ty = _V64 if self.bytes else _V16
        x = builder.load(builder.inttoptr(addr, ty.as_pointer()), align=1 if self.bytes else 2)
        return builder.bitcast(x, _VI32) if self.bytes else x

    def madd(self, builder: ir.IRBuilder, acc: ir.Value, x: ir.Value, y: ir.Value) -> ir.Value:
        """acc + the products of query x and stored y (keys, values) summed in pairs (in
        fours where :attr:`bytes`)."""
        if self.bytes:
            return _dpbusd(builder, acc, y, x)
        return (_madd if self.int8 else _dpbf16)(builder, acc, x, y)

    def add(self, builder: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
        return (builder.add if self.int8 else builder.fadd)(x, y)

    def to_float(self, builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
        return builder.sitofp(x, _vec()) if self.int8 else x


def _pair_dots(rows: int, cols: int, kind: str) -> Any:
    """:func:`int_dots` (``kind`` "int8") or :func:`bf16_dots` ("bf16")."""
    pairs = _Pairs(kind, query=True)
    # byte tiles of 2 LANES products hold two tokens per key vector (:func:`int_dots`)
    packed = 2 if pairs.bytes and rows * cols == 2 * LANES else 1
    _need_pairs(kind, f"{kind}_dots needs {LANES} products; got {rows} x {cols}",
                rows * cols == packed * LANES and cols % packed == 0
                and dot_registers(rows, cols // packed) <= REGISTERS)
    step = pairs.step // packed
    vectors = cols // packed  # key vectors (and accumulators per row)

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
        _mark_widest(builder)
        q, ldq, k, ldk, d, s, lds, add = args[:8]
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(pairs.acc, None))
                 for _ in range(vectors)] for _ in range(rows)]
        with cgutils.for_range(builder, builder.sdiv(d, _I64(step))) as loop:
            i = builder.mul(loop.index, _I64(step))
            qsize = _I64(1 if pairs.bytes else 2)
            qs = [pairs.load_query(builder, builder.add(q, builder.mul(
                builder.add(builder.mul(_I64(r), ldq), i), qsize)), packed)
                for r in range(rows)]
            size = _I64(1 if pairs.int8 else 2)
            ks = [pairs.load(builder, *(builder.add(k, builder.mul(builder.add(builder.mul(
                _I64(c * packed + t), ldk), i), size)) for t in range(packed)))
                for c in range(vectors)]
            for r in range(rows):
                for c in range(vectors):
                    acc = accs[r][c]
                    builder.store(pairs.madd(builder, builder.load(acc), qs[r], ks[c]), acc)
        flat = [builder.load(accs[r][c]) for r in range(rows) for c in range(vectors)]
        lanes = ir.VectorType(_I32, LANES)
        per = LANES // cols  # rows per vector of totals
        row_t, col_t = ir.VectorType(_F32, rows), ir.VectorType(_F32, cols)
        by_col = ir.Constant(lanes, [j % cols for j in range(LANES)])
        if pairs.bytes:  # the keys' offset: 128 times each row's query sum
            offset = builder.load(builder.inttoptr(args[10], ir.VectorType(
                _I32, rows).as_pointer()), align=4)
        if pairs.int8:  # the query's and the keys' scales
            qv = builder.load(builder.inttoptr(args[9], row_t.as_pointer()), align=4)
            kv = builder.load(builder.inttoptr(args[8], col_t.as_pointer()), align=4)
        for v, total in enumerate(_reduce_tree(builder, flat, pairs.add, packed)):
            # row v * per + j // cols, token j % cols in lane j
            by_row = ir.Constant(lanes, [v * per + j // cols for j in range(LANES)])
            if pairs.bytes:
                total = builder.sub(total, builder.shuffle_vector(offset, offset, by_row))
            total = pairs.to_float(builder, total)
            if pairs.int8:  # times the products of the scales
                total = builder.fmul(total, builder.fmul(
                    builder.shuffle_vector(qv, qv, by_row), builder.shuffle_vector(kv, kv, by_col)))
            for j in range(per):
                part = builder.shuffle_vector(total, total, ir.Constant(
                    ir.VectorType(_I32, cols), [j * cols + c for c in range(cols)]))
                out = _pointer(builder, s, builder.mul(_I64(v * per + j), lds), col_t)
                old = builder.load(out, align=4)
                builder.store(builder.select(add, builder.fadd(old, part), part), out, align=4)
        return context.get_dummy_value()

    return codegen


@functools.cache
def int_dots(rows: int, cols: int) -> Any:
    """:func:`dots` for integer queries and int8 keys, in integers (:data:`INT_MADD`).

    ``int_dots(q, ldq, k, ldk, d, s, lds, add, ksc, qsc, qoff)`` computes, for
    ``r < rows`` and ``c < cols`` (``rows * cols`` = :data:`LANES`, or 2 LANES with
    :data:`QUERY_BYTES`)::

        s[r * lds + c] = (s[r * lds + c] if add else 0)
                         + qsc[r] * ksc[c] * sum over i < d of q[r * ldq + i] * k[c * ldk + i]

    ``k`` int8; ``q`` int8 where :data:`QUERY_BYTES` (VNNI), else int16; ``s``, ``ksc``
    and ``qsc`` float32; ``qoff`` int32, ``128 * sum(q[r])`` per row (read only where
    :data:`QUERY_BYTES`): byte addresses, strides in elements, ``d`` a multiple of
    :data:`INT_DOTS_STEP`.

    - With VNNI, a step of 4 LANES elements loads a key vector as bytes offset to unsigned
      (``k ^ 0x80`` = k + 128) and runs one ``vpdpbusd`` per product (4 LANES
      multiply-adds, where a float32 FMA does LANES); the offset adds 128 sum(q[r]) to
      each total, which ``qoff`` takes off. ``rows * cols`` = 2 LANES (4 x 8) packs two
      tokens in each key vector: a step of 2 LANES elements of each, the query's 2 LANES
      bytes in both halves; the accumulators start the fold half summed, so 8 tokens
      take 14 folds where two tiles of 4 took 30 (:func:`_reduce_tree` with ``k`` 2).
    - Otherwise a step of 2 LANES elements sign-extends a key vector to int16 once and
      runs one multiply-add per product (:func:`_madd`: 2 LANES).

    The integer sums are exact while d <= :data:`INT_DOTS_MAX_D` (|q| <= 127, k + 128 <=
    255: 512 x 255 x 127 < 2^31; |q| <= 32767, |k| <= 128: 512 x 32767 x 128 < 2^31)
    and become float32 once, when the tile's totals are folded into one vector
    (:func:`_reduce_tree`) and scaled. Only where :data:`INT_MADD`.
    """
    codegen = _pair_dots(rows, cols, "int8")

    def typer(typingctx: Any, q: Any, ldq: Any, k: Any, ldk: Any, d: Any, s: Any,  # noqa: ARG001, PLR0913
              lds: Any, add: Any, ksc: Any, qsc: Any, qoff: Any) -> Any:
        sig = types.void(types.uintp, types.intp, types.uintp, types.intp, types.intp,
                         types.uintp, types.intp, types.boolean, types.uintp, types.uintp,
                         types.uintp)
        return sig, codegen

    typer.__name__ = f"int_dots_{rows}x{cols}"
    return intrinsic(typer)


@functools.cache
def bf16_dots(rows: int, cols: int) -> Any:
    """:func:`dots` for bfloat16 queries and keys, with ``vdpbf16ps`` (:data:`BF16_DOT`).

    ``bf16_dots(q, ldq, k, ldk, d, s, lds, add)`` computes, for ``r < rows`` and
    ``c < cols`` (``rows * cols`` = :data:`LANES`)::

        s[r * lds + c] = (s[r * lds + c] if add else 0)
                         + sum over i < d of q[r * ldq + i] * k[c * ldk + i]

    ``q`` and ``k`` bfloat16 bits (uint16), ``s`` float32: byte addresses, strides in
    elements, ``d`` a multiple of 2 LANES. One ``vdpbf16ps`` per product and step of 2
    LANES elements (a float32 FMA does LANES, after the keys are widened); the products
    of two bfloat16 are exact in float32, summed in float32 lanes, then folded
    (:func:`_reduce_tree`). Only where :data:`BF16_DOT`.
    """
    codegen = _pair_dots(rows, cols, "bf16")

    def typer(typingctx: Any, q: Any, ldq: Any, k: Any, ldk: Any, d: Any, s: Any,  # noqa: ARG001, PLR0913
              lds: Any, add: Any) -> Any:
        sig = types.void(types.uintp, types.intp, types.uintp, types.intp, types.intp,
                         types.uintp, types.intp, types.boolean)
        return sig, codegen

    typer.__name__ = f"bf16_dots_{rows}x{cols}"
    return intrinsic(typer)


#: The most tokens :func:`int_values` sums in int32 without overflow (|w| <= 32767,
#: |a| <= 127: 512 x 32767 x 127 < 2^31).
INT_VALUES_MAX_K = 512


def _pair_values(rows: int, vectors: int, kind: str) -> Any:
    """:func:`int_values` (``kind`` "int8") or :func:`bf16_values` ("bf16")."""
    _need_pairs(kind, f"{kind}_values needs an even number of vectors that fit with the "
                f"rows; got {rows} x {vectors}", vectors % 2 == 0 and rows >= 1
                and tile_registers(rows, vectors) <= REGISTERS)
    pairs = _Pairs(kind)
    size = 1 if pairs.int8 else 2
    chunks = vectors // 2  # 2 LANES columns each: one load of 2 LANES elements per token
    width = 2 * LANES
    # in each 128-bit lane (8 int16), the unpack puts the low 4 of x0 and x1 side by
    # side (lo) or the high 4 (hi): lo's 32-bit lanes hold columns 0-3, 8-11, 16-19, ...
    # of the chunk, hi's 4-7, 12-15, ...
    lo = [x for lane in range(LANES // 4) for i in range(4)
          for x in (8 * lane + i, width + 8 * lane + i)]
    hi = [x + 4 for x in lo]
    # column order from lo || hi: group g of 4 columns is in lo (g even) or hi (g odd)
    order = [(0 if (c // 4) % 2 == 0 else LANES) + (c // 8) * 4 + c % 4 for c in range(width)]
    first, second = order[:LANES], order[LANES:]

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: list) -> Any:  # noqa: ARG001
        _mark_widest(builder)
        a, lda, w, ldw, k, c, ldc = args[:7]
        pf, npf = args[-2:]
        per = prefetch_lines(vectors, 2 * size)  # lines a step reads: 2 tokens
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(pairs.acc, None))
                 for _ in range(vectors)] for _ in range(rows)]
        lda_bytes = builder.mul(lda, _I64(size))
        with cgutils.for_range(builder, builder.sdiv(k, _I64(2))) as loop:
            i = loop.index
            for u in range(per):
                line = builder.add(builder.mul(i, _I64(per)), _I64(u))
                with builder.if_then(builder.icmp_signed("<", line, npf), likely=True):
                    _prefetch(builder, builder.add(pf, builder.mul(line, _I64(64))))
            t = builder.mul(i, _I64(2))
            row0 = builder.add(a, builder.mul(t, lda_bytes))
            row1 = builder.add(row0, lda_bytes)
            vals = []
            for u in range(chunks):
                x0, x1 = (pairs.load(builder, builder.add(row, _I64(width * u * size)))
                          for row in (row0, row1))
                for mask in (lo, hi):
                    vals.append(builder.shuffle_vector(x0, x1, ir.Constant(
                        ir.VectorType(_I32, width), mask)))
            for r in range(rows):
                wp = builder.add(w, builder.mul(builder.add(builder.mul(_I64(r), ldw), t),
                                                _I64(2)))
                pair = builder.load(builder.inttoptr(wp, _I32.as_pointer()), align=4)
                wv = builder.insert_element(ir.Constant(_VI32, ir.Undefined), pair, _I32(0))
                wv = builder.bitcast(builder.shuffle_vector(
                    wv, wv, ir.Constant(_VI32, [0] * LANES)), _V16)
                for j in range(vectors):
                    acc = accs[r][j]
                    builder.store(pairs.madd(builder, builder.load(acc), wv, vals[j]), acc)
        for r in range(rows):
            if pairs.int8:
                wsc = args[7]
                scale = _splat(builder, builder.load(_pointer(builder, wsc, _I64(r), _F32),
                                                     align=4))
            crow = builder.mul(_I64(r), ldc)
            for u in range(chunks):
                lo_f, hi_f = (pairs.to_float(builder, builder.load(accs[r][2 * u + h]))
                              for h in (0, 1))
                for half, cols in enumerate((first, second)):
                    total = builder.shuffle_vector(lo_f, hi_f, ir.Constant(_VI32, cols))
                    ptr = _pointer(builder, c, builder.add(crow, _I64(width * u + LANES * half)),
                                   _vec())
                    old = builder.load(ptr, align=4)
                    builder.store(_call(builder, "fma", total, scale, old) if pairs.int8
                                  else builder.fadd(total, old), ptr, align=4)
        return context.get_dummy_value()

    return codegen


@functools.cache
def int_values(rows: int, vectors: int) -> Any:
    """The value pass of an int8 cache in integers (:data:`INT_MADD`).

    ``int_values(a, lda, w, ldw, k, c, ldc, wsc, pf, npf)`` computes, for ``r < rows``
    and the ``vectors * LANES`` columns ``j``::

        c[r * ldc + j] += wsc[r] * sum over t < k of w[r * ldw + t] * a[t * lda + j]

    ``a`` int8 rows (the values), ``w`` int16 weights, ``c`` and ``wsc`` float32: byte
    addresses, strides in elements; ``k`` even, at most :data:`INT_VALUES_MAX_K`. Each
    step takes two tokens: their value rows are sign-extended to int16 and interleaved
    (token t's and t+1's element j side by side in one int32 lane, an in-lane unpack)
    and each row's weight pair is broadcast, so one multiply-add (:func:`_madd`) does two
    tokens' worth of LANES columns for one row (a float32 FMA does one token's). The
    int32 sums are exact; they are put back in column order, converted and scaled once,
    at the end. Like :func:`widening_tile` it prefetches the ``npf`` lines from ``pf``
    on, as many per step as the step reads. Only where :data:`INT_MADD`.
    """
    codegen = _pair_values(rows, vectors, "int8")

    def typer(typingctx: Any, a: Any, lda: Any, w: Any, ldw: Any, k: Any, c: Any,  # noqa: ARG001, PLR0913
              ldc: Any, wsc: Any, pf: Any, npf: Any) -> Any:
        sig = types.void(types.uintp, types.intp, types.uintp, types.intp, types.intp,
                         types.uintp, types.intp, types.uintp, types.uintp, types.intp)
        return sig, codegen

    typer.__name__ = f"int_values_{rows}x{vectors}"
    return intrinsic(typer)


@functools.cache
def bf16_values(rows: int, vectors: int) -> Any:
    """The value pass of a bfloat16 cache with ``vdpbf16ps`` (:data:`BF16_DOT`).

    ``bf16_values(a, lda, w, ldw, k, c, ldc, pf, npf)`` computes, for ``r < rows`` and
    the ``vectors * LANES`` columns ``j``::

        c[r * ldc + j] += sum over t < k of w[r * ldw + t] * a[t * lda + j]

    ``a`` bfloat16 rows (the values) and ``w`` bfloat16 weights (uint16 bits), ``c``
    float32: byte addresses, strides in elements; ``k`` even. As :func:`int_values`:
    two tokens' rows interleaved, each row's weight pair broadcast, one ``vdpbf16ps``
    per two tokens' LANES columns of a row, float32 sums put back in column order and
    added once, at the end; it prefetches the ``npf`` lines from ``pf`` on, as many per
    step as the step reads. Only where :data:`BF16_DOT`.
    """
    codegen = _pair_values(rows, vectors, "bf16")

    def typer(typingctx: Any, a: Any, lda: Any, w: Any, ldw: Any, k: Any, c: Any,  # noqa: ARG001, PLR0913
              ldc: Any, pf: Any, npf: Any) -> Any:
        sig = types.void(types.uintp, types.intp, types.uintp, types.intp, types.intp,
                         types.uintp, types.intp, types.uintp, types.intp)
        return sig, codegen

    typer.__name__ = f"bf16_values_{rows}x{vectors}"
    return intrinsic(typer)
