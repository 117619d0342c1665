"""BLAS thread control, through ``threadpoolctl`` (OpenBLAS, MKL, BLIS, ... whichever numpy uses)."""
from __future__ import annotations

from contextlib import contextmanager

_controller = None  # a threadpoolctl.ThreadpoolController, made once: finding the libraries is slow


def _blas():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.select(user_api="blas")


def can_set_blas_threads() -> bool:
    """Whether ``blas_threads`` can change the BLAS thread count here (a BLAS that
    threadpoolctl knows is loaded)."""
    return bool(_blas().lib_controllers)


@contextmanager
def blas_threads(n: int):
    """Run the block with numpy's BLAS using ``n`` threads (process-wide), restoring the
    previous count afterwards; yields False, changing nothing, where that is not possible."""
    blas = _blas()
    if not blas.lib_controllers:
        yield False
        return
    with blas.limit(limits=int(n)):
        yield True
