"""Models written as plain forward code on top of ``tinygrad_cnn``. ``MODELS`` maps the names
the training scripts accept to constructors."""
from .seed_cnn import SeedCNN
from .fc_baseline import FCBaseline
from .fast_cnn import FastCNN
from .airbench import Airbench94, Airbench93
from .resnet import ResNet9, ResNetCifar, resnet20

MODELS = {"seed_cnn": SeedCNN, "fc": FCBaseline, "fast_cnn": FastCNN, "airbench94": Airbench94,
          "airbench93": Airbench93, "resnet20": resnet20, "resnet9": ResNet9}

__all__ = ["SeedCNN", "FCBaseline", "FastCNN", "Airbench94", "Airbench93", "ResNetCifar", "resnet20", "ResNet9",
           "MODELS"]
