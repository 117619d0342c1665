"""Residual networks for CIFAR-10, as plain forward code.

``ResNetCifar(depth)``: He et al., "Deep Residual Learning for Image Recognition" (2016),
section 4.2, for depth = 6n + 2 (``resnet20`` n=3: 0.27 M parameters; 32, 44, 56, 110):

    conv3x3(3 -> 16) -> BN -> ReLU
    3 stages of n BasicBlocks, 16 / 32 / 64 channels on 32 / 16 / 8 pixels; the first block of
    stages 2 and 3 halves the image with a stride-2 convolution
    global average pool -> linear(64 -> 10)

A ``BasicBlock`` is conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU. The
shortcut is the identity, or where a block changes the shape, the paper's option A (no
parameters): every other pixel, with the new channels zero-padded (half before, half after,
as the widely used CIFAR ResNet code). Convolutions have no bias (BatchNorm's shift follows);
their weights are Kaiming-normal with fan_out (torchvision's choice), BatchNorm weight 1 and
bias 0, the linear layer PyTorch's default.

``ResNet9``: the fast net of David Page's DAWNBench entry ("How to train your ResNet", 2018),
each ``conv_bn`` a conv3x3 (no bias) -> BN -> ReLU:

    prep    conv_bn(3 -> 64)
    layer1  conv_bn(64 -> 128) -> max-pool 2 -> + residual(conv_bn, conv_bn at 128)
    layer2  conv_bn(128 -> 256) -> max-pool 2
    layer3  conv_bn(256 -> 512) -> max-pool 2 -> + residual(conv_bn, conv_bn at 512)
    global max-pool -> linear(512 -> 10, no bias) -> x 0.125

6.57 M parameters, PyTorch's default initialisation. The state_dict names are those of the
PyTorch twins in ``benchmarks/torch_twins.py``, so weights move between the two.
"""
from __future__ import annotations

import tinygrad_cnn.functional as F
from tinygrad_cnn import init, nn


def conv3x3(c_in, c_out, stride=1, rng=None):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, rng=rng)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut around them; ``stride`` 2 halves the image."""

    def __init__(self, c_in, c_out, stride=1, rng=None):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride, rng)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out, 1, rng)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra_channels = stride, c_out - c_in

    def shortcut(self, x):
        """Option A: subsample by the stride, zero-pad the new channels (no parameters)."""
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            before = self.extra_channels // 2
            x = F.pad(x, ((0, 0), (before, self.extra_channels - before), (0, 0), (0, 0)))
        return x

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """He et al.'s CIFAR-10 ResNet of ``depth`` = 6n + 2 layers (n blocks per stage);
    ``widths`` are the three stages' channels."""

    def __init__(self, depth=20, in_channels=3, num_classes=10, image_size=32, widths=(16, 32, 64), rng=None):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNetCifar: depth must be 6n + 2 for a whole n >= 1 (8, 14, 20, 32, 44, 56, "
                             f"110, ...); got {depth!r}")
        n = (depth - 2) // 6
        self.depth = depth
        w1, w2, w3 = widths
        self.conv1 = conv3x3(in_channels, w1, 1, rng)
        self.bn1 = nn.BatchNorm2d(w1)
        self.layer1 = self._stage(w1, w1, n, 1, rng)
        self.layer2 = self._stage(w1, w2, n, 2, rng)
        self.layer3 = self._stage(w2, w3, n, 2, rng)
        self.fc = nn.Linear(w3, num_classes, rng=rng)  # image_size: any; the pool is global
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=rng)

    @staticmethod
    def _stage(c_in, c_out, blocks, stride, rng):
        return nn.Sequential(BasicBlock(c_in, c_out, stride, rng),
                             *(BasicBlock(c_out, c_out, 1, rng) for _ in range(blocks - 1)))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))  # global average pool

    def extra_repr(self):
        return f"depth={self.depth}"


def resnet20(**kwargs):
    return ResNetCifar(20, **kwargs)


def resnet32(**kwargs):
    return ResNetCifar(32, **kwargs)


def resnet44(**kwargs):
    return ResNetCifar(44, **kwargs)


def resnet56(**kwargs):
    return ResNetCifar(56, **kwargs)


def resnet110(**kwargs):
    return ResNetCifar(110, **kwargs)


class ConvBN(nn.Module):
    """conv3x3 (no bias) -> BatchNorm2d; the ReLU is the caller's (after a max-pool where
    there is one: the same values and gradients on a quarter of the elements)."""

    def __init__(self, c_in, c_out, rng=None):
        super().__init__()
        self.conv = conv3x3(c_in, c_out, 1, rng)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class Residual(nn.Module):
    """x + relu(bn(conv(relu(bn(conv(x)))))): two conv_bn layers around an identity shortcut."""

    def __init__(self, channels, rng=None):
        super().__init__()
        self.res1 = ConvBN(channels, channels, rng)
        self.res2 = ConvBN(channels, channels, rng)

    def forward(self, x):
        return x + F.relu(self.res2(F.relu(self.res1(x))))


class ResNet9(nn.Module):
    """Page's DAWNBench ResNet-9 (``widths`` of prep and the three layers: 64/128/256/512)."""

    def __init__(self, in_channels=3, num_classes=10, image_size=32, widths=(64, 128, 256, 512), scale=0.125,
                 rng=None):
        super().__init__()
        c0, c1, c2, c3 = widths
        self.prep = ConvBN(in_channels, c0, rng)
        self.layer1 = ConvBN(c0, c1, rng)
        self.res1 = Residual(c1, rng)
        self.layer2 = ConvBN(c1, c2, rng)
        self.layer3 = ConvBN(c2, c3, rng)
        self.res3 = Residual(c3, rng)
        self.fc = nn.Linear(c3, num_classes, bias=False, rng=rng)  # image_size: any; the last pool is global
        self.scale = scale

    def forward(self, x):
        x = F.relu(self.prep(x))
        x = self.res1(F.relu(F.max_pool2d(self.layer1(x), 2)))
        x = F.relu(F.max_pool2d(self.layer2(x), 2))
        x = self.res3(F.relu(F.max_pool2d(self.layer3(x), 2)))
        x = x.max(axis=(2, 3))  # global max-pool (4 x 4 pixels for a 32 x 32 image)
        return self.fc(x) * self.scale
