"""The primitive ops: each one's forward and hand-written VJP, side by side, in one registry.

``REGISTRY`` maps an op's name to its class; ``registry()`` lists them. Everything else in
the framework (functional, nn, models) is composed from these, so their gradients come from
the graph. Adding an op: write the class in one of the modules below, decorate it with
``@register``, and add its property test in ``tests/test_ops_gradcheck.py`` (the suite fails
for a registered op without one).
"""
from ..tensor import Op

REGISTRY: dict[str, type[Op]] = {}


def register(cls):
    """Add a primitive to the registry under ``cls.name`` (names are unique)."""
    if cls.name in REGISTRY:
        raise ValueError(f"register: an op named {cls.name!r} is already registered ({REGISTRY[cls.name].__name__})")
    REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Op]]:
    """A copy of the registry: op name -> op class."""
    return dict(REGISTRY)


from .elementwise import (Add, Sub, Mul, Div, Neg, Pow, Exp, Log, Maximum, Relu, ReluBackward,  # noqa: E402
                          Sigmoid, Tanh, Cast, PowTensor, Where)
from .special import Erf, Log1p, Expm1, Gelu, GeluBackward  # noqa: E402
from .reduce import Sum, Max, LogSoftmax  # noqa: E402
from .shape import Reshape, Transpose, Expand, GetItem, ScatterAdd, Pad, Concatenate  # noqa: E402
from .linalg import Matmul  # noqa: E402
from .conv import Im2col, Col2im, Conv2d, Conv2dWeight  # noqa: E402
from .pool import MaxPool2d, MaxPool2dBackward, MaxPool2dGather, AvgPool2d, AvgPool2dBackward  # noqa: E402
from .norm import BatchNorm, BatchNormBackward, ChannelAffine  # noqa: E402

__all__ = ["Op", "REGISTRY", "register", "registry",
           "Add", "Sub", "Mul", "Div", "Neg", "Pow", "Exp", "Log", "Maximum", "Relu", "ReluBackward",
           "Sigmoid", "Tanh", "Cast", "PowTensor", "Where", "Erf", "Log1p", "Expm1", "Gelu", "GeluBackward",
           "Sum", "Max", "LogSoftmax", "Reshape", "Transpose", "Expand", "GetItem",
           "ScatterAdd", "Pad", "Concatenate", "Matmul",
           "Im2col", "Col2im", "MaxPool2d", "MaxPool2dBackward", "MaxPool2dGather", "AvgPool2d",
           "AvgPool2dBackward", "BatchNorm", "BatchNormBackward", "ChannelAffine",
           "Conv2d", "Conv2dWeight"]
