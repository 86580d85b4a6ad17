"""Motion correction and MP-PCA denoising of a DCE series (dipy), on planted motion and noise."""

import numpy as np
import pytest
from scipy import ndimage

from kinetics import KineticsInputError
from kinetics.preprocess import denoise_mppca, motion_correct


def phantom(shape=(32, 32, 12)):
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    body = ((x - 16) ** 2 / 120 + (y - 16) ** 2 / 60 + (z - 6) ** 2 / 20) < 1
    organ = ((x - 12) ** 2 + (y - 18) ** 2 + (z - 6) ** 2 * 2) < 20
    return ndimage.gaussian_filter(100.0 * body + 80.0 * organ, 1.0)


def test_motion_correction_undoes_planted_translations():
    base = phantom()
    shifts = [(0, 0, 0), (2.0, 0, 0), (0, -1.5, 0), (1.0, 1.0, 0.5), (0, 0, 0)]
    enhancement = [1.0, 1.3, 1.5, 1.4, 1.3]  # contrast changes between frames, as in DCE
    series = np.stack([ndimage.shift(base * g, s, order=1) for s, g in zip(shifts, enhancement)], axis=-1)
    corrected = motion_correct(series, np.eye(4), reference=0, transform="translation", level_iters=(50, 20, 5))
    assert corrected.series.shape == series.shape and corrected.affines.shape == (5, 4, 4)
    for i, s in enumerate(shifts):
        # the registration's translation maps the reference grid onto the moved frame
        np.testing.assert_allclose(corrected.affines[i, :3, 3], s, atol=0.3)
    before = np.mean([np.abs(series[..., i] / enhancement[i] - base).mean() for i in range(5)])
    after = np.mean([np.abs(corrected.series[..., i] / enhancement[i] - base).mean() for i in range(5)])
    assert after < 0.5 * before


def test_mppca_reduces_noise_and_keeps_the_signal(rng):
    t = np.linspace(0, 1, 20)
    curves = np.stack([np.exp(-t * k) for k in (1.0, 3.0)])
    labels = rng.integers(0, 2, (16, 16, 8))
    clean = 100.0 * curves[labels]
    noisy = clean + rng.normal(0, 5.0, clean.shape)
    denoised = denoise_mppca(noisy, patch_radius=2)
    assert np.sqrt(np.mean((denoised - clean) ** 2)) < 0.5 * np.sqrt(np.mean((noisy - clean) ** 2))


def test_preprocessing_errors():
    with pytest.raises(KineticsInputError, match="use patch_radius >= 2"):
        denoise_mppca(np.zeros((8, 8, 8, 40)), patch_radius=1)
    with pytest.raises(KineticsInputError, match="4D"):
        motion_correct(np.zeros((8, 8, 8)), np.eye(4))
    with pytest.raises(KineticsInputError, match="unknown 'warp'"):
        motion_correct(np.zeros((8, 8, 8, 2)), np.eye(4), transform="warp")
