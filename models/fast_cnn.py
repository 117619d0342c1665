"""A stronger CNN for the accuracy-in-time goal: five 3x3 conv-BatchNorm-ReLU blocks
(32-32-64-64-128) with three 2x2 max-pools, then one linear layer; 160,234 parameters.
Convolutions have no bias because BatchNorm's shift follows."""
import tinygrad_cnn.functional as F
from tinygrad_cnn import nn


class ConvBN(nn.Module):
    """conv3x3 (no bias) -> BatchNorm2d; the ReLU is applied by the caller (after pooling
    where there is one, which gives the same result on a quarter of the elements)."""

    def __init__(self, c_in, c_out, rng=None):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, rng=rng)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class FastCNN(nn.Module):
    def __init__(self, in_channels=3, num_classes=10, image_size=32, widths=(32, 32, 64, 64, 128), rng=None):
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.block1 = ConvBN(in_channels, c1, rng)
        self.block2 = ConvBN(c1, c2, rng)
        self.block3 = ConvBN(c2, c3, rng)
        self.block4 = ConvBN(c3, c4, rng)
        self.block5 = ConvBN(c4, c5, rng)
        self.fc = nn.Linear(c5 * (image_size // 8) ** 2, num_classes, rng=rng)

    def forward(self, x):
        x = F.relu(self.block1(x))
        x = F.relu(F.max_pool2d(self.block2(x), 2))
        x = F.relu(self.block3(x))
        x = F.relu(F.max_pool2d(self.block4(x), 2))
        x = F.relu(F.max_pool2d(self.block5(x), 2))
        return self.fc(x.flatten(1))
