"""Array kernels: the fast implementations that the primitives in ``ops/`` call.

A primitive in ``ops/`` says *what* it computes (its forward is a call into this package)
and its VJP in Tensor code; this package says *how*, on raw arrays, as fast as numpy allows:
scratch buffers, channel blocks on threads, GEMM layouts, index tricks. Every kernel takes
its array module from its inputs (``xp.array_module``), so CuPy arrays run through the same
code, and every non-trivial one has a plain-loop reference beside it (``naive_*``) that the
tests compare it against.
"""
