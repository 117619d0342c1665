"""tinygrad_cnn: a small, fast, honest deep-learning framework on numpy.

    import tinygrad_cnn as tc
    from tinygrad_cnn import Tensor, no_grad, gradcheck
    import tinygrad_cnn.functional as F
"""
from .tensor import Tensor, grad, no_grad, enable_grad, is_grad_enabled, zeros, ones, randn, where
from .gradcheck import gradcheck, gradgradcheck, GradcheckError
from . import ops, functional, nn, optim, parallel, autograd
from .profiler import profile
from .functional import cat, concatenate, stack, split, chunk
from .rng import manual_seed

__version__ = "0.1.0"

__all__ = ["Tensor", "grad", "no_grad", "enable_grad", "is_grad_enabled", "zeros", "ones", "randn",
           "where", "cat", "concatenate", "stack", "split", "chunk",
           "gradcheck", "gradgradcheck", "GradcheckError", "ops", "functional", "nn", "optim", "parallel", "autograd", "profile", "manual_seed"]
