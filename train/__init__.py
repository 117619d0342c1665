"""Training scripts: ``python -m train.cifar10`` and ``python -m train.compare``."""
import os

# OpenBLAS worker threads spin for ~2^28 cycles after each GEMM by default, taking a core
# from the numpy copies (im2col/col2im, pooling) that run between GEMMs; a short spin
# roughly halved col2im's time in a FastCNN step here (docs/performance.md). This must be
# set before numpy loads OpenBLAS; an explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
