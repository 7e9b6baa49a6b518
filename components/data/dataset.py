"""From stored HU slices to model inputs.

`model_input` is the one preprocessing used by training, evaluation and the registered
model, so a slice is seen the same way everywhere: each channel is one CT window mapped
to 0..255 (what keras.applications' preprocess_input functions expect), then resized.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from components.config import Window


def apply_window(hu: np.ndarray, window: Window) -> np.ndarray:
    """Map HU to 0..255 through a CT window; values outside it saturate.

    Args:
        hu: a 2-D slice in Hounsfield units.
        window: center and width in HU.

    Returns:
        float32 array of the same shape with values in [0, 255].
    """
    scaled = (hu.astype(np.float32) - window.low) / window.width
    return np.clip(scaled, 0.0, 1.0) * 255.0


def _resize(channel: np.ndarray, size: int) -> np.ndarray:
    if channel.shape == (size, size):
        return channel
    image = Image.fromarray(channel, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def center_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """The central square whose side is `fraction` of the image's shorter side."""
    if fraction >= 1.0:
        return image
    side = max(1, round(min(image.shape[:2]) * fraction))
    top = (image.shape[0] - side) // 2
    left = (image.shape[1] - side) // 2
    return image[top : top + side, left : left + side]


def model_input(
    hu: np.ndarray, windows: Sequence[Window], size: int, crop: float = 1.0
) -> np.ndarray:
    """Turn an HU slice into the 3-channel image a backbone takes.

    Args:
        hu: a 2-D slice in Hounsfield units.
        windows: the window of each channel, three of them (InputConfig.channel_windows()).
        size: side of the square output in pixels (the backbone's input size).
        crop: keep the central square of this fraction of the shorter side first
            (InputConfig.crop; 1 keeps the whole slice).

    Returns:
        float32 array (size, size, 3) with values in [0, 255].

    Raises:
        ValueError: the slice is not 2-D or there are not three windows.
    """
    if hu.ndim != 2:
        raise ValueError(f"expected a 2-D HU slice, got shape {hu.shape}")
    if len(windows) != 3:
        raise ValueError(f"expected 3 channel windows, got {len(windows)}")
    hu = center_crop(hu, crop)
    channels = [_resize(apply_window(hu, w), size) for w in windows]
    return np.stack(channels, axis=-1)
