import numpy as np
import pytest

from components.config import InputConfig, Window
from components.data.dataset import apply_window, model_input


def test_window_maps_edges_to_0_and_255_and_saturates():
    w = Window(center=40, width=400)
    hu = np.array([[-1000, -160, 40, 240, 3000]], dtype=np.int16)
    np.testing.assert_allclose(apply_window(hu, w), [[0, 0, 127.5, 255, 255]])


def test_three_windows_give_three_different_channels_at_model_size():
    cfg = InputConfig()
    hu = np.linspace(-1000, 1500, 64 * 64).reshape(64, 64).astype(np.int16)
    x = model_input(hu, cfg.channel_windows(), 32)
    assert x.shape == (32, 32, 3) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 255
    assert not np.allclose(x[..., 0], x[..., 1]) and not np.allclose(x[..., 1], x[..., 2])


def test_grey_mode_copies_one_window_three_times():
    cfg = InputConfig(mode="grey", grey_window="soft_tissue")
    hu = np.linspace(-200, 300, 48 * 48).reshape(48, 48).astype(np.int16)
    x = model_input(hu, cfg.channel_windows(), 48)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    np.testing.assert_allclose(x[..., 0], apply_window(hu, cfg.windows["soft_tissue"]))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        model_input(np.zeros((2, 8, 8)), InputConfig().channel_windows(), 8)
    with pytest.raises(ValueError, match="3 channel windows"):
        model_input(np.zeros((8, 8)), [Window(center=0, width=1)], 8)


def test_crop_keeps_the_central_square_before_resizing():
    hu = np.full((100, 80), -1000, dtype=np.int16)
    hu[40:60, 30:50] = 2000
    w = InputConfig().windows["bone"]
    x = model_input(hu, [w, w, w], 20, crop=0.25)
    assert np.all(x[..., 0] == 255)
    whole = model_input(hu, [w, w, w], 20)
    assert whole[..., 0].mean() < x[..., 0].mean()
