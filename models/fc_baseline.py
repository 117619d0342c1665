"""The fully connected comparison network of the seed's study: flatten -> 3072 -> 256 -> 64
-> 10 with ReLU between layers (sizes configurable)."""
import tinygrad_cnn.functional as F
from tinygrad_cnn import nn


class FCBaseline(nn.Module):
    def __init__(self, sizes=(3072, 256, 64, 10), rng=None):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"FCBaseline: sizes needs an input and an output size; got {sizes!r}")
        self.sizes = tuple(sizes)
        self.layers = nn.Sequential(*(nn.Linear(a, b, rng=rng) for a, b in zip(sizes[:-1], sizes[1:])))

    def forward(self, x):
        x = x.flatten(1)
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < n - 1:
                x = F.relu(x)
        return x
