"""The seed project's CNN, layer for layer: the network that reached 32.2% on CIFAR-10 after
90 epochs (12 hours) with a hand-written backward pass that was wrong below the last layer.

conv3x3(3->16, pad 1) -> ReLU -> maxpool 2 -> conv3x3(16->32, pad 1) -> ReLU -> maxpool 2
-> fc(2048->64) -> ReLU -> fc(64->10); 136,874 parameters.
"""
import math

import numpy as np

import tinygrad_cnn.functional as F
from tinygrad_cnn import nn


class SeedCNN(nn.Module):
    def __init__(self, in_channels=3, num_classes=10, image_size=32, rng=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, rng=rng)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, rng=rng)
        self.fc1 = nn.Linear(32 * (image_size // 4) ** 2, 64, rng=rng)
        self.fc2 = nn.Linear(64, num_classes, rng=rng)

    def forward(self, x):
        # relu(maxpool(x)) == maxpool(relu(x)) (both monotone): pooling first runs the ReLU
        # on a quarter of the elements, and the gradients are the same.
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def seed_init(model: SeedCNN, rng: np.random.Generator) -> SeedCNN:
    """The seed's initialisation: every weight and bias ~ N(0, 1) / sqrt(fan-in channels),
    where "fan-in channels" is the input channel count of a conv (3, 16) and, as in the
    seed's code, 32 for fc1 (not its 2048 inputs) and 64 for fc2."""
    for layer, fan in ((model.conv1, model.conv1.in_channels), (model.conv2, model.conv2.in_channels),
                       (model.fc1, 32), (model.fc2, model.fc2.in_features)):
        for p in (layer.weight, layer.bias):
            p.data = (rng.standard_normal(p.shape) / math.sqrt(fan)).astype(p.dtype)
    return model
