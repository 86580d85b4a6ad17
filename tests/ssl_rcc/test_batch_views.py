"""Views made a batch at a time on the training device: exact geometry, MONAI-equivalent intensity
changes, per-sample seeds, and real CT crops."""

import math

import numpy as np
import torch
from monai.transforms import AdjustContrast

from ssl_rcc.data import PreprocessConfig, build_cache
from ssl_rcc.data.batch_views import BatchViewTransform, gaussian_blur, resample_affine, rotation_matrices


def test_identity_and_flips_reproduce_the_input_exactly():
    x = torch.rand(2, 3, 10, 12, 14)
    np.testing.assert_allclose(resample_affine(x, torch.eye(3).expand(2, 3, 3)), x, atol=1e-5)
    for axis in range(3):
        signs = torch.ones(3)
        signs[axis] = -1
        np.testing.assert_allclose(resample_affine(x, torch.diag(signs).expand(2, 3, 3)), x.flip(2 + axis), atol=1e-5)


def test_a_quarter_turn_is_a_rot90_in_the_right_plane():
    x = torch.rand(1, 1, 9, 9, 5)  # non-cubic: the rotation must stay in voxel units
    turned = resample_affine(x, rotation_matrices(torch.tensor([[0.0, 0.0, math.pi / 2]])))
    np.testing.assert_allclose(turned, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    y = torch.rand(1, 1, 7, 6, 7)
    turned = resample_affine(y, rotation_matrices(torch.tensor([[0.0, math.pi / 2, 0.0]])))
    np.testing.assert_allclose(turned, torch.rot90(y, 1, dims=(2, 4)), atol=1e-5)


def test_small_rotations_of_non_cubic_crops_match_scipy():
    from scipy.ndimage import affine_transform

    x = torch.rand(1, 1, 33, 17, 9, dtype=torch.float64)
    rotation = rotation_matrices(torch.tensor([[0.05, -0.08, math.radians(10)]], dtype=torch.float64))
    ours = resample_affine(x, rotation)[0, 0].numpy()
    centre = (np.array(x.shape[2:]) - 1) / 2
    matrix = rotation[0].numpy()
    expected = affine_transform(x[0, 0].numpy(), matrix, offset=centre - matrix @ centre, order=1)
    inner = (slice(4, -4), slice(4, -4), slice(2, -2))  # away from the borders, where padding modes differ
    np.testing.assert_allclose(ours[inner], expected[inner], atol=1e-6)


def test_blur_keeps_constants_and_has_the_asked_variance():
    flat = torch.full((2, 1, 8, 8, 8), 0.3)
    np.testing.assert_allclose(gaussian_blur(flat, torch.tensor([[1.0] * 3, [0.0] * 3]), radius=3), flat, atol=1e-6)
    impulse = torch.zeros(1, 1, 21, 21, 21)
    impulse[0, 0, 10, 10, 10] = 1
    blurred = gaussian_blur(impulse, torch.tensor([[0.8, 1.5, 0.0]]), radius=8)[0, 0]
    offsets = torch.arange(-10, 11.0) ** 2
    variances = [float((blurred.sum(dim=tuple(d for d in range(3) if d != a)) * offsets).sum()) for a in range(3)]
    np.testing.assert_allclose(variances, [0.64, 2.25, 0.0], atol=1e-3)


def test_gamma_matches_monai_adjust_contrast():
    x = torch.rand(1, 2, 6, 6, 6)
    transform = BatchViewTransform(flip_prob=0, prob=1.0, intensity=0.0, noise_std=0.0, geometric=False)
    gamma = float(transform.draw([5])["gamma"][0])
    np.testing.assert_allclose(transform(x, [5])[0], AdjustContrast(gamma)(x[0]), atol=1e-5)


def test_nothing_drawn_leaves_the_batch_as_it_was():
    x = torch.rand(3, 2, 8, 8, 8)
    transform = BatchViewTransform(flip_prob=0, prob=0)
    np.testing.assert_allclose(transform(x, [1, 2, 3]), x, atol=1e-5)


def test_each_sample_follows_its_own_seed():
    x = torch.rand(6, 2, 16, 16, 16)
    transform = BatchViewTransform(prob=1.0)
    a, b = transform(x, range(6)), transform(x, range(6))
    assert torch.equal(a, b)
    np.testing.assert_allclose(transform(x[2:4], [2, 3]), a[2:4], atol=1e-6)  # not the batch's neighbours
    assert not torch.allclose(transform(x, range(10, 16)), a)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()


def test_views_of_real_ct_crops(tmp_path, abdomen_dir):
    (tmp_path / "list.csv").write_text(f"image\n{abdomen_dir / 'example_ct_sm.nii.gz'}\n")
    archive = build_cache(tmp_path / "list.csv", tmp_path / "cache", config=PreprocessConfig(spacing_mm=(3.0,) * 3),
                          progress=False)
    volume = torch.from_numpy(np.asarray(archive.load(0)[0], np.float32))
    c = np.array(volume.shape[1:]) // 2 - 12  # the scan is 122 x 101 x 30 voxels of 3 mm
    crops = torch.stack([volume[:, c[0]:c[0] + 24, c[1]:c[1] + 24, c[2]:c[2] + 24]] * 4)
    views = BatchViewTransform(prob=1.0, flip_prob=0.0)(crops, [0, 1, 2, 3])
    assert torch.isfinite(views).all() and views.shape == crops.shape
    # rotations of at most 10 degrees, 10% scaling and intensity changes: each view still resembles its crop
    for v, x in zip(views, crops):
        assert np.corrcoef(v.flatten(), x.flatten())[0, 1] > 0.5
