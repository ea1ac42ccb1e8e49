"""advdetect.plotting: what the figures hold (Agg backend, image data checked)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from advdetect.plotting import plot_reconstructions  # noqa: E402


def _image(fig, row, col, n):
    return fig.axes[row * n + col].get_images()[0]


def test_colour_error_images_show_a_signed_value_per_pixel():
    # Issue 14, item 10: an RGB difference used to be drawn as an RGB picture,
    # which matplotlib clips to [0, 1]: every negative error vanished.
    rng = np.random.default_rng(0)
    X = rng.random((2, 3, 6, 6)).astype(np.float32)
    rec = rng.random((2, 3, 6, 6)).astype(np.float32)
    diff = X - rec
    fig = plot_reconstructions([X, rec, diff], ["x", "x'", "x - x'"], n=2)
    try:
        for c in range(2):
            im = _image(fig, 2, c, 2)
            data = np.asarray(im.get_array())
            assert data.shape == (6, 6)  # one value per pixel, not an RGB triple
            pick = np.abs(diff[c]).argmax(axis=0)
            expected = np.take_along_axis(diff[c], pick[None], axis=0)[0]
            np.testing.assert_allclose(data, expected)
            assert data.min() < 0  # the negative half is there
            assert im.get_cmap().name == "seismic"
            assert im.norm.vmin == -im.norm.vmax == -1.0
        # The images themselves stay RGB, in [0, 1].
        np.testing.assert_allclose(np.asarray(_image(fig, 0, 0, 2).get_array()),
                                   np.transpose(X[0], (1, 2, 0)), atol=1e-7)
    finally:
        plt.close(fig)


def test_error_row_is_signed_even_where_one_image_has_no_negative_value():
    X = np.full((2, 1, 4, 4), 0.5, np.float32)
    rec = X.copy()
    rec[0] -= 0.2            # image 0: x - x' = +0.2 everywhere
    rec[1] += 0.3            # image 1: -0.3
    fig = plot_reconstructions([X, rec, X - rec], ["x", "x'", "x - x'"], n=2)
    try:
        for c in range(2):
            im = _image(fig, 2, c, 2)
            assert im.get_cmap().name == "seismic"
            assert im.norm.vmin == -im.norm.vmax
        assert _image(fig, 0, 0, 2).get_cmap().name == "gray"
    finally:
        plt.close(fig)


@pytest.mark.parametrize("channels", [1, 3])
def test_images_are_drawn_in_their_value_range(channels):
    # Issue 14, item 5: 8-bit images (input_range=(0, 255)) were drawn on [0, 1].
    rng = np.random.default_rng(1)
    X = (rng.random((2, channels, 5, 5)) * 255).astype(np.float32)
    rec = np.clip(X + rng.normal(0, 20, X.shape), 0, 255).astype(np.float32)
    fig = plot_reconstructions([X, rec, X - rec], ["x", "x'", "x - x'"], n=2,
                               value_range=(0, 255))
    try:
        im = _image(fig, 0, 0, 2)
        if channels == 1:
            assert (im.norm.vmin, im.norm.vmax) == (0, 255)
            np.testing.assert_allclose(np.asarray(im.get_array()), X[0, 0])
        else:
            np.testing.assert_allclose(np.asarray(im.get_array()),
                                       np.transpose(X[0], (1, 2, 0)) / 255, rtol=1e-6)
        err = _image(fig, 2, 0, 2)
        assert (err.norm.vmin, err.norm.vmax) == (-255, 255)
    finally:
        plt.close(fig)


def test_signed_flags_must_match_the_rows():
    X = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="one flag per row"):
        plot_reconstructions([X, X], ["a", "b"], n=1, signed=[True])
