"""The special-function kernels (numpy has no erf, scipy is not a dependency) against the C
library's, through Python's math module: no torch needed."""
from __future__ import annotations

import math

import numpy as np

from tinygrad_cnn.kernels import special

F64 = np.float64


def _ulps(ours, exact):
    exact = np.asarray(exact)
    return np.abs(ours - exact) / np.spacing(np.maximum(np.abs(exact), np.finfo(F64).tiny))


def test_erf_kernel_is_accurate_to_float64_rounding_over_a_wide_range():
    """Cody's approximations against the C library's erf: within 4 units in the last place
    everywhere (the worst is just above 0.46875, where erf switches to 1 - erfc), from
    denormals to the saturation at |x| ~ 6, both signs; and the special values."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-7, 7, 20000), rng.standard_normal(5000) * 1e-3,
                        np.geomspace(1e-300, 30, 3000), -np.geomspace(1e-300, 30, 3000),
                        [0.46875, -0.46875, np.nextafter(0.46875, 1), 4.0, np.nextafter(4.0, 5), 5.9, 6.0, 26.6]])
    exact = np.array([math.erf(v) for v in x])
    assert _ulps(special.erf(x), exact).max() <= 4
    assert _ulps(special.erf(x[np.abs(x) > 1]), exact[np.abs(x) > 1]).max() <= 1
    erfc_exact = np.array([math.erfc(v) for v in x])
    normal = erfc_exact > np.finfo(F64).tiny * 2**52  # erfc: not in the denormals (x < 26)
    assert _ulps(special.erfc(x[normal]), erfc_exact[normal]).max() <= 8
    np.testing.assert_array_equal(special.erf(np.array([0.0, -0.0, np.inf, -np.inf, 50.0, -50.0])),
                                  [0.0, -0.0, 1.0, -1.0, 1.0, -1.0])
    assert np.signbit(special.erf(np.array([-0.0])))[0]
    assert np.isnan(special.erf(np.array([np.nan]))).all() and np.isnan(special.erfc(np.array([np.nan]))).all()


def test_erf_kernel_keeps_dtype_and_shape():
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    out = special.erf(x)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out, [[math.erf(v) for v in row] for row in x.astype(F64)], rtol=1e-6)
    assert special.erf(np.float64(0.5)).shape == () and special.erf(np.zeros((2, 0))).shape == (2, 0)
