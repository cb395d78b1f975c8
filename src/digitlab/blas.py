"""``C <- beta C + A^T B`` in place, with NumPy's own BLAS: the one product NumPy does not expose.

Momentum SGD's velocity update ``v <- mu v + a^T delta`` is, as NumPy writes it, a GEMM into a
new array and two passes over the weight-sized velocity. BLAS does it in one call (``beta =
mu``), which NumPy's ``matmul`` never makes. For a 784 x 400 layer this is a few percent of an
MLP step (measured in benchmarks/README.md).

The call goes to the very library NumPy's ``matmul`` uses (its wheel's ``scipy-openblas``,
found through threadpoolctl), so the thread limits set on NumPy's BLAS hold for it, no second
BLAS wakes its own threads beside NumPy's (SciPy's OpenBLAS is another library: interleaving
the two made an MLP step several times slower), and the arithmetic is that of ``a.T @ b``:
OpenBLAS scales ``C`` by ``beta`` first and adds the product's blocks to it, so with one block
along the summed axis (up to :data:`ONE_BLOCK_ROWS` rows) the result is bit for bit
``beta * c + a.T @ b`` as NumPy computes it (``tests/test_blas.py``); with more rows the block
sums are added to ``C`` one by one, equal to float rounding.

Those equalities are checked, not assumed: before its first use the call is compared with NumPy
on probe shapes spanning the sizes it serves, and used only if every entry agrees bit for bit.
Some kernel families do not agree: OpenBLAS's SkylakeX family (and its successors, and the
SVE kernels of arm64) computes small products with kernels that round ``beta C + A B`` once,
and some families sum fewer rows per block; there the arrays are used.

Where NumPy's BLAS is not such a library (another build, a platform without it), disagrees with
NumPy, or the arrays do not suit it, :func:`gemm_tn_` returns False and the caller computes the
same with NumPy. ``DIGITLAB_NUMPY_BLAS=0`` (or ``off``) turns the direct calls off; it is read
once per process, at the first use.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

ENV = "DIGITLAB_NUMPY_BLAS"
#: Rows of ``A`` and ``B`` (the summed axis) up to which OpenBLAS's kernels sum the product in
#: one block, so that ``beta C + A^T B`` is bit for bit NumPy's ``beta * c + a.T @ b``
#: (measured with the Haswell, Zen and SandyBridge kernels: float32 from 320 or 512 rows on,
#: float64 from 320 rows on, the results differ in the last bits).
ONE_BLOCK_ROWS = 256
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
#: The cblas symbols of the scipy-openblas builds NumPy's wheels ship: (prefix, suffix, the
#: integer type of sizes). ILP64 (NumPy >= 2 wheels) first, then the 32-bit build.
_SCHEMES = (("scipy_cblas_", "64_", ctypes.c_int64), ("scipy_cblas_", "", ctypes.c_int32))


def _numpy_blas_path() -> str | None:
    """The file of the OpenBLAS loaded by NumPy (None if it is not a scipy-openblas library
    inside NumPy's installation, or threadpoolctl is missing)."""
    try:
        from threadpoolctl import threadpool_info

        infos = threadpool_info()
    except Exception:  # missing, or failing to inspect this platform's libraries
        return None
    here = Path(np.__file__).resolve().parent
    roots = (here, here.parent / "numpy.libs")  # macOS: numpy/.dylibs; Linux, Windows: numpy.libs
    for info in infos:
        path = Path(info.get("filepath") or "")
        if info.get("internal_api") != "openblas" or not path.name.startswith("libscipy_openblas"):
            continue
        resolved = path.resolve()
        if any(root == resolved.parent or root in resolved.parents for root in roots):
            return str(resolved)
    return None


@functools.cache
def _gemm_functions() -> dict[np.dtype, Any] | None:
    """``{float32: sgemm, float64: dgemm}`` bound with their C signatures, once they gave
    NumPy's numbers on the probe shapes (:func:`_exact`); None where NumPy's BLAS cannot be
    reached, disagrees, or is turned off."""
    if os.environ.get(ENV, "").strip().lower() in ("0", "off", "false", "no"):
        return None
    fns = bound_functions()
    return fns if fns is not None and _exact(fns) else None


def bound_functions() -> dict[np.dtype, Any] | None:
    """``{float32: sgemm, float64: dgemm}`` of NumPy's own BLAS bound with their C signatures,
    before any check of their numbers; None where that library cannot be found or lacks the
    symbols."""
    path = _numpy_blas_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:  # pragma: no cover - the library is already loaded by NumPy
        return None
    for prefix, suffix, size_t in _SCHEMES:
        try:
            found = {
                np.dtype(np.float32): (getattr(lib, f"{prefix}sgemm{suffix}"), ctypes.c_float),
                np.dtype(np.float64): (getattr(lib, f"{prefix}dgemm{suffix}"), ctypes.c_double),
            }
        except AttributeError:
            continue
        fns = {}
        for dtype, (fn, real) in found.items():
            i, n, p = ctypes.c_int, size_t, ctypes.c_void_p
            fn.argtypes = [i, i, i, n, n, n, real, p, n, p, n, real, p, n]
            fn.restype = None
            fns[dtype] = fn
        return fns
    return None


#: Probe shapes ``(n, p, q)`` of :func:`_exact`: from a few thousand multiply-adds (where some
#: kernel families switch to small-matrix kernels) to an MLP layer's 784 x 400, and
#: :data:`ONE_BLOCK_ROWS` rows (a family summing fewer rows per block disagrees there).
PROBES = ((2, 20, 80), (32, 20, 80), (16, 70, 65), (128, 100, 100), (ONE_BLOCK_ROWS, 300, 100),
          (128, 784, 400))  # fmt: skip


def _exact(fns: dict[np.dtype, Any]) -> bool:
    """Whether the bound functions give NumPy's ``c *= beta; c += a.T @ b`` bit for bit on
    :data:`PROBES` (a wrong signature or a kernel rounding otherwise gives other numbers);
    40-60 ms on two cores, once per process."""
    rng = np.random.default_rng(0)
    for dtype, fn in fns.items():
        for n, p, q in PROBES:
            a, b, c = (rng.standard_normal(s).astype(dtype) for s in ((n, p), (n, q), (p, q)))
            expected = c * dtype.type(0.9)
            expected += a.T @ b
            _call(fn, c, a, b, 0.9)
            if not np.array_equal(c, expected):
                return False
    return True


def _call(fn: Any, c: np.ndarray, a: np.ndarray, b: np.ndarray, beta: float) -> None:
    n, p = a.shape
    q = b.shape[1]
    # row-major C (p, q) = beta C + A^T B with A (n, p), B (n, q): C = op(A) op(B), op(A) = A^T
    fn(_ROW_MAJOR, _TRANS, _NO_TRANS, p, q, n, 1.0, a.ctypes.data, p, b.ctypes.data, q,
       beta, c.ctypes.data, q)  # fmt: skip


def available() -> bool:
    """Whether :func:`gemm_tn_` can reach NumPy's BLAS in this process."""
    return _gemm_functions() is not None


def _suits(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Same float dtype, 2-D, C-contiguous and aligned, conforming, nonempty, ``c`` writeable
    and apart from ``a`` and ``b``."""
    if not (a.dtype == b.dtype == c.dtype) or a.ndim != 2 or b.ndim != 2 or c.ndim != 2:
        return False
    if a.shape[0] != b.shape[0] or c.shape != (a.shape[1], b.shape[1]) or 0 in a.shape + c.shape:
        return False
    if not all(x.flags.c_contiguous and x.flags.aligned for x in (a, b, c)):
        return False
    if not c.flags.writeable or np.may_share_memory(c, a) or np.may_share_memory(c, b):
        return False
    return max(a.shape + b.shape) < 2**31  # the 32-bit build's sizes


def gemm_tn_(c: np.ndarray, a: np.ndarray, b: np.ndarray, beta: float) -> bool:
    """``c <- beta * c + a.T @ b`` in place with NumPy's BLAS, if it can.

    Parameters
    ----------
    c : ndarray (p, q)
        Overwritten; float32 or float64, C-contiguous.
    a : ndarray (n, p)
    b : ndarray (n, q)
        Same dtype as ``c``, C-contiguous.
    beta : float
        With 0, ``c``'s old values are not read (BLAS: a NaN there does not propagate).

    Returns
    -------
    bool
        True when done; False (``c`` untouched) where NumPy's BLAS is unreachable or the
        arrays do not suit a direct call: the caller computes it with NumPy.
    """
    fns = _gemm_functions()
    if fns is None or c.dtype not in fns or not _suits(c, a, b):
        return False
    _call(fns[c.dtype], c, a, b, float(beta))
    return True
