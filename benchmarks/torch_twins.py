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

    def conv3x3(a, b, stride=1):
        return tnn.Conv2d(a, b, 3, stride=stride, padding=1, bias=False)

    class BasicBlock(tnn.Module):  # models/resnet.py: option A shortcut, no parameters
        def __init__(self, a, b, stride):
            super().__init__()
            self.conv1, self.bn1 = conv3x3(a, b, stride), tnn.BatchNorm2d(b)
            self.conv2, self.bn2 = conv3x3(b, b), tnn.BatchNorm2d(b)
            self.stride, self.extra = stride, b - a

        def forward(self, x):
            f = tnn.functional
            out = self.bn2(self.conv2(f.relu(self.bn1(self.conv1(x)))))
            short = x[:, :, ::self.stride, ::self.stride]
            if self.extra:
                short = f.pad(short, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
            return f.relu(out + short)

    class ResNetCifar(tnn.Module):
        def __init__(self, depth):
            super().__init__()
            n = (depth - 2) // 6
            self.conv1, self.bn1 = conv3x3(3, 16), tnn.BatchNorm2d(16)
            self.layer1, self.layer2, self.layer3 = (
                tnn.Sequential(BasicBlock(a, b, s), *(BasicBlock(b, b, 1) for _ in range(n - 1)))
                for a, b, s in ((16, 16, 1), (16, 32, 2), (32, 64, 2)))
            self.fc = tnn.Linear(64, 10)

        def forward(self, x):
            x = tnn.functional.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(x.mean((2, 3)))

    class ConvBN9(tnn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.conv, self.bn = conv3x3(a, b), tnn.BatchNorm2d(b)

        def forward(self, x):  # Page's order: conv -> bn -> relu (-> pool), relu applied by the caller
            return self.bn(self.conv(x))

    class Residual(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.res1, self.res2 = ConvBN9(c, c), ConvBN9(c, c)

        def forward(self, x):
            f = tnn.functional
            return x + f.relu(self.res2(f.relu(self.res1(x))))

    class ResNet9(tnn.Module):
        def __init__(self):
            super().__init__()
            self.prep, self.layer1, self.res1 = ConvBN9(3, 64), ConvBN9(64, 128), Residual(128)
            self.layer2, self.layer3, self.res3 = ConvBN9(128, 256), ConvBN9(256, 512), Residual(512)
            self.fc = tnn.Linear(512, 10, bias=False)

        def forward(self, x):
            f = tnn.functional
            x = f.relu(self.prep(x))
            x = self.res1(f.max_pool2d(f.relu(self.layer1(x)), 2))
            x = f.max_pool2d(f.relu(self.layer2(x)), 2)
            x = self.res3(f.max_pool2d(f.relu(self.layer3(x)), 2))
            x = f.adaptive_max_pool2d(x, 1).flatten(1)
            return self.fc(x) * 0.125

    if name in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"):
        return ResNetCifar(int(name[6:]))
    if name == "resnet9":
        return ResNet9()
    if name in ("airbench94", "airbench93"):  # benchmarks/airbench_torch.py: the recipe's reference
        from benchmarks.airbench_torch import make_net
        from train.airbench import RECIPES

        return make_net(RECIPES[name].widths)
    return {"seed_cnn": Seed, "fast_cnn": Fast, "fc": FC}[name]()
