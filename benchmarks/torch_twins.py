"""Our models written again in PyTorch, layer for layer, with the same parameter names and
shapes (so a ``state_dict`` copies straight across). Used by the speed benchmark and by the
tests that check our logits and gradients against PyTorch; needs torch, which only ever
serves as an oracle.
"""
from __future__ import annotations


def torch_model(name):
    import torch.nn as tnn

    class Seed(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = tnn.Conv2d(3, 16, 3, padding=1), tnn.Conv2d(16, 32, 3, padding=1)
            self.fc1, self.fc2 = tnn.Linear(2048, 64), tnn.Linear(64, 10)

        def forward(self, x):
            f = tnn.functional
            x = f.relu(f.max_pool2d(self.conv1(x), 2))
            x = f.relu(f.max_pool2d(self.conv2(x), 2))
            return self.fc2(f.relu(self.fc1(x.flatten(1))))

    class ConvBN(tnn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.conv, self.bn = tnn.Conv2d(a, b, 3, padding=1, bias=False), tnn.BatchNorm2d(b)

        def forward(self, x):
            return self.bn(self.conv(x))

    class Fast(tnn.Module):
        def __init__(self):
            super().__init__()
            self.block1, self.block2, self.block3 = ConvBN(3, 32), ConvBN(32, 32), ConvBN(32, 64)
            self.block4, self.block5 = ConvBN(64, 64), ConvBN(64, 128)
            self.fc = tnn.Linear(2048, 10)

        def forward(self, x):
            f = tnn.functional
            x = f.relu(self.block1(x))
            x = f.relu(f.max_pool2d(self.block2(x), 2))
            x = f.relu(self.block3(x))
            x = f.relu(f.max_pool2d(self.block4(x), 2))
            x = f.relu(f.max_pool2d(self.block5(x), 2))
            return self.fc(x.flatten(1))

    class FC(tnn.Module):
        def __init__(self):
            super().__init__()
            self.layers = tnn.Sequential(tnn.Linear(3072, 256), tnn.Linear(256, 64), tnn.Linear(64, 10))

        def forward(self, x):
            x = x.flatten(1)
            for i, layer in enumerate(self.layers):
                x = layer(x)
                x = tnn.functional.relu(x) if i < 2 else x
            return x

    if name in ("airbench94", "airbench93"):  # benchmarks/airbench_torch.py: the recipe's reference
        from benchmarks.airbench_torch import make_net
        from train.airbench import RECIPES

        return make_net(RECIPES[name].widths)
    return {"seed_cnn": Seed, "fast_cnn": Fast, "fc": FC}[name]()
