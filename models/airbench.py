"""The airbench networks (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
2024; github.com/KellerJordan/cifar10-airbench), as plain forward code.

    whiten: conv 2x2 (3 -> 24, no padding, frozen weights from the training patches'
            eigendecomposition; its bias trains for the first epochs) -> GELU
    3 x ConvGroup(w): conv3x3 -> max-pool 2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU
    max-pool 3 -> flatten -> linear (no bias) -> x 1/9

Widths 64/256/256 for ``Airbench94`` (1.97 M parameters), 64/128/128 for ``Airbench93``. Every
3x3 convolution starts as the identity on its first C_in filters (the rest keep the default
init); BatchNorm's scale is frozen at 1 (only its shift trains), with eps 1e-12 and airbench's
momentum 0.6 (PyTorch's momentum 0.4). A 32x32 image becomes 31x31 after the whitening conv,
then 15, 7 and 3 pixels after the groups' pools, and 1 after the last. The recipe that trains
them (optimizer groups, lookahead, augmentation, TTA) is in ``train/airbench.py``.
"""
from __future__ import annotations

import tinygrad_cnn.functional as F
from tinygrad_cnn import init, nn
from tinygrad_cnn.tensor import Tensor

WHITEN_KERNEL = 2

gelu = F.gelu  # exact (erf), as airbench's nn.GELU()


def frozen_scale_batch_norm(channels, momentum):
    """BatchNorm2d whose scale stays 1 (not trained), eps 1e-12; ``momentum`` is airbench's
    (the weight of the old running statistics), so PyTorch's momentum is ``1 - momentum``."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=1.0 - momentum)
    bn.weight.requires_grad = False
    return bn


def identity_conv(c_in, c_out, rng):
    """A bias-free 3x3 'same' convolution whose first ``min(c_in, c_out)`` filters are the identity."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, rng=rng)
    init.dirac_(Tensor(conv.weight.data[:c_in]))
    return conv


class ConvGroup(nn.Module):
    def __init__(self, c_in, c_out, bn_momentum, rng=None):
        super().__init__()
        self.conv1 = identity_conv(c_in, c_out, rng)
        self.norm1 = frozen_scale_batch_norm(c_out, bn_momentum)
        self.conv2 = identity_conv(c_out, c_out, rng)
        self.norm2 = frozen_scale_batch_norm(c_out, bn_momentum)

    def forward(self, x):
        x = gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return gelu(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """The airbench network with group widths ``widths``. Call ``init_whitening(images)`` with
    (normalised) training images before training: until then the first layer is an arbitrary
    frozen convolution."""

    def __init__(self, widths=(64, 256, 256), in_channels=3, num_classes=10, image_size=32, bn_momentum=0.6,
                 logit_scale=1 / 9, rng=None):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"{type(self).__name__}: widths must give the three groups' widths; got {widths!r}")
        whiten_width = 2 * in_channels * WHITEN_KERNEL ** 2
        self.widths, self.logit_scale = tuple(widths), float(logit_scale)
        self.whiten = nn.Conv2d(in_channels, whiten_width, WHITEN_KERNEL, padding=0, bias=True, rng=rng)
        self.whiten.weight.requires_grad = False
        self.whiten.bias.data[...] = 0  # as airbench: the bias starts at zero
        self.group1 = ConvGroup(whiten_width, widths[0], bn_momentum, rng)
        self.group2 = ConvGroup(widths[0], widths[1], bn_momentum, rng)
        self.group3 = ConvGroup(widths[1], widths[2], bn_momentum, rng)
        size = image_size - WHITEN_KERNEL + 1
        for _ in range(3):
            size //= 2
        if size < 3:
            raise ValueError(f"{type(self).__name__}: image_size {image_size} is too small (the last pool "
                             f"needs 3x3 maps; at least 26 pixels)")
        self.head = nn.Linear(widths[2] * (size // 3) ** 2, num_classes, bias=False, rng=rng)

    def init_whitening(self, images, eps=5e-4):
        """Set the whitening filters from ``images``, a float (N, C, H, W) array of normalised
        training images (airbench uses the first 5,000)."""
        init.whitening_(self.whiten.weight, images, eps)
        return self

    def forward(self, x):
        x = gelu(self.whiten(x))
        x = self.group3(self.group2(self.group1(x)))
        x = F.max_pool2d(x, 3).flatten(1)
        return self.head(x) * self.logit_scale


class Airbench94(AirbenchNet):
    """Widths 64/256/256: airbench94's network (94.0% on CIFAR-10 in 9.9 epochs with its recipe)."""

    def __init__(self, in_channels=3, num_classes=10, image_size=32, rng=None, **kwargs):
        super().__init__((64, 256, 256), in_channels, num_classes, image_size, rng=rng, **kwargs)


class Airbench93(AirbenchNet):
    """Widths 64/128/128: airbench93's network (93.0% in 11 epochs)."""

    def __init__(self, in_channels=3, num_classes=10, image_size=32, rng=None, **kwargs):
        super().__init__((64, 128, 128), in_channels, num_classes, image_size, rng=rng, **kwargs)


def batch_norm_biases(model):
    """The trainable shifts of the model's BatchNorm layers (airbench's higher-lr group)."""
    return [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.bias is not None
            and m.bias.requires_grad]


__all__ = ["AirbenchNet", "Airbench94", "Airbench93", "ConvGroup", "batch_norm_biases", "gelu"]
