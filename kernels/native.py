"""Call a numba-compiled function by its address, from numba code.

When one ``@njit`` function calls another by name, numba links the callee's LLVM module
into the caller's and optimises and compiles the whole again. A ``parallel=True``
driver around a large kernel then pays for the kernel's code two more times (the
parfor's gufunc, then the driver itself): for the attention step, 23 s of a cold
first call instead of 15 s (GQA, float32, AMD EPYC Zen 4), on every dtype and preset.
Called through :func:`call`, the kernel is compiled once, as itself, and the driver
holds one indirect call; the call costs what a direct one does (the kernel runs for
microseconds to milliseconds, once per parallel range).

The address is an argument of the driver, not a constant in its code, so the driver
stays in numba's on-disk cache; :func:`address` gives it for the argument types of
the call, compiling the kernel for them on first use (or loading it from the cache).
The driver must pass exactly those types: :func:`address` is given sample arguments of
the same numba types as those the driver passes.
"""

from __future__ import annotations

from typing import Any

import numba
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

try:  # the dispatcher's own C fingerprint of the arguments' numba types: ~1 us, not ~100
    from numba._dispatcher import compute_fingerprint as _fingerprint
except ImportError:  # pragma: no cover - a numba without it
    def _fingerprint(value: Any) -> Any:
        return numba.typeof(value)

_ADDRESSES: dict[tuple[Any, ...], int] = {}


def address(dispatcher: Any, args: tuple[Any, ...]) -> int:
    """The address of ``dispatcher``'s native code for the numba types of ``args``,
    compiled (or loaded from numba's cache) on first use; remembered per type."""
    try:
        key = (dispatcher, _fingerprint(args))
    except (TypeError, ValueError, NotImplementedError):  # no fingerprint: type it
        key = (dispatcher, numba.typeof(args))
    found = _ADDRESSES.get(key)
    if found is None:
        sig = tuple(numba.typeof(a) for a in args)
        dispatcher.compile(sig)
        result = dispatcher.overloads[sig]
        found = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
        if not found:
            raise RuntimeError(f"no native code for {dispatcher.py_func.__name__}{sig}")
        _ADDRESSES[key] = found
    return found


@intrinsic
def call(typingctx, addr, args):  # noqa: ARG001 (numba passes the typing context)
    """``call(addr, (a, b, ...))``: the function at ``addr`` (from :func:`address` for
    arguments of exactly these types, returning nothing) called on ``a, b, ...``; an
    exception it raises is raised here."""
    if not isinstance(addr, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    argtys = list(args.types)

    def codegen(context, builder, signature, llargs):  # noqa: ARG001
        fnty = context.call_conv.get_function_type(types.none, argtys)
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        values = [builder.extract_value(llargs[1], i) for i in range(len(argtys))]
        status, _ = context.call_conv.call_function(builder, fn, types.none, argtys, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.none(addr, args), codegen
