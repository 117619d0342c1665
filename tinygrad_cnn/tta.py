"""Test-time augmentation: a classifier's logits averaged over mirrored and translated views
of each image (airbench's evaluation, Jordan 2024).

    logits = tta.predict(model, images, level=2)   # images: normalised float (N, C, H, W)

Levels, as airbench's ``tta_level``:

- 0: the image alone;
- 1: the mean of the image and its mirror image;
- 2: half of level 1, plus half of the mean of level 1 over the image translated by one
  pixel up-left and by one pixel down-right (reflect padding), six views in all.

The views of a chunk of images go through the model as one batch (one large GEMM per layer
instead of six), under ``no_grad`` and in eval mode (the model's mode is restored after).
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, no_grad
from .xp import array_module

__all__ = ["LEVELS", "views", "combine", "predict"]

LEVELS = (0, 1, 2)
_VIEWS = {0: 1, 1: 2, 2: 6}


def _check(level):
    if level not in LEVELS:
        raise ValueError(f"tta: level must be 0 (none), 1 (mirror) or 2 (mirror + translate); got {level!r}")


def views(x, level):
    """The augmented views of a batch ``x`` (N, C, H, W), stacked view-major: (V*N, C, H, W)
    with V = 1, 2 or 6 for level 0, 1, 2 (order: image, mirror; then up-left and its mirror,
    down-right and its mirror)."""
    _check(level)
    xp = array_module(x)
    if x.ndim != 4:
        raise ValueError(f"tta: expects a batch of shape (N, C, H, W); got shape {x.shape}")
    if level == 0:
        return x
    out = [x, x[..., ::-1]]
    if level == 2:
        if min(x.shape[2:]) < 2:
            raise ValueError(f"tta: translation needs images of at least 2x2 pixels; got {x.shape[2:]}")
        h, w = x.shape[2:]
        padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
        for dy, dx in ((0, 0), (2, 2)):  # content moved down-right / up-left by one pixel
            shifted = padded[:, :, dy:dy + h, dx:dx + w]
            out += [shifted, shifted[..., ::-1]]
    return xp.ascontiguousarray(xp.concatenate(out))


def combine(logits, level):
    """Average the logits of ``views(x, level)`` (V*N, classes) into (N, classes) with the
    level's weights."""
    _check(level)
    v = _VIEWS[level]
    if logits.shape[0] % v:
        raise ValueError(f"tta: {logits.shape[0]} rows of logits are not {v} views of a batch")
    per_view = logits.reshape(v, -1, *logits.shape[1:])
    if level == 0:
        return per_view[0]
    mirror = 0.5 * (per_view[0] + per_view[1])
    if level == 1:
        return mirror
    translated = 0.25 * (per_view[2] + per_view[3] + per_view[4] + per_view[5])
    return 0.5 * mirror + 0.5 * translated


def predict(model, images, level=2, batch_size=1000, return_plain=False):
    """Logits (N, classes) of ``model`` on ``images`` (an (N, C, H, W) float array), averaged
    over the views of ``level``. ``batch_size`` bounds the images per forward pass, views
    included (at least one image's views). With ``return_plain``, also the logits of the
    images alone, ``(logits, plain)``: the first of the views, so a plain evaluation beside
    a TTA one costs no second pass."""
    _check(level)
    x = np.asarray(images) if not hasattr(images, "__cuda_array_interface__") else images
    if x.ndim != 4:
        raise ValueError(f"tta.predict: images must be (N, C, H, W); got shape {x.shape}")
    if int(batch_size) < 1:
        raise ValueError(f"tta.predict: batch_size must be positive; got {batch_size}")
    chunk = max(1, int(batch_size) // _VIEWS[level])
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        parts, plain = [], []
        with no_grad():
            for lo in range(0, x.shape[0], chunk):
                out = model(Tensor(views(x[lo:lo + chunk], level))).data
                parts.append(combine(out, level))
                plain.append(out[:len(parts[-1])])  # view 0: the images as they are
    finally:
        if was_training:
            model.train()
    xp = array_module(x)
    join = (lambda p: xp.concatenate(p) if p else xp.zeros((0, 0), dtype=x.dtype))
    return (join(parts), join(plain)) if return_plain else join(parts)
