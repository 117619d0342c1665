"""Datasets, loading and augmentation on plain numpy arrays.

    from tinygrad_cnn.data import load_cifar10, DataLoader, Compose, RandomCrop, \
        RandomHorizontalFlip, Normalize, CIFAR10_MEAN, CIFAR10_STD

    train = load_cifar10(args.data, "train")            # uint8 (50000, 3, 32, 32), int64 labels
    aug = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    loader = DataLoader(train, batch_size=128, shuffle=True, seed=0, transform=aug)
    for x, y in loader: ...                              # x float32 (B, 3, 32, 32), y int64 (B,)

Batches are made by indexing whole arrays and augmentation is vectorised over the batch, so
there is no per-sample Python loop anywhere. No pickle is used to read any file.
"""
from .errors import DatasetError
from .dataset import ArrayDataset
from .download import DownloadError, download_file, md5sum
from .paths import ENV_VAR, DEFAULT_CACHE_DIR
from .cifar10 import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_URL, CIFAR10_MD5, CIFAR10_SIZE,
                      CIFAR10_FILENAME, find_cifar10, read_cifar10, load_cifar10)
from .fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                            FASHION_MNIST_DIR, FASHION_MNIST_FILES, find_fashion_mnist, read_idx,
                            load_fashion_mnist)
from .loader import DataLoader
from .transforms import Compose, ToFloat, Normalize, RandomCrop, RandomHorizontalFlip, AlternatingFlip

__all__ = [
    "DatasetError", "DownloadError", "ArrayDataset", "download_file", "md5sum", "ENV_VAR", "DEFAULT_CACHE_DIR",
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_URL", "CIFAR10_MD5", "CIFAR10_SIZE",
    "CIFAR10_FILENAME", "find_cifar10", "read_cifar10", "load_cifar10",
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES", "find_fashion_mnist", "read_idx", "load_fashion_mnist",
    "DataLoader", "Compose", "ToFloat", "Normalize", "RandomCrop", "RandomHorizontalFlip", "AlternatingFlip",
]
