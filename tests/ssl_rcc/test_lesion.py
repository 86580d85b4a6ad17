"""What the encoder sees of a lesion: the crop scaled to the tumour, the descriptors carried beside the
embedding, crops of enhancing tissue for pretraining, and the health figures of a representation."""

import nibabel as nib
import numpy as np
import pytest

from ssl_rcc.data import PreprocessConfig, preprocess_volume, read_mask, read_nifti
from ssl_rcc.data.crops import box_crop, centred_crop, lesion_box
from ssl_rcc.data.views import LESION_VIEW_ZOOM, lesion_views, make_views, tissue_centre
from ssl_rcc.features.lesion import lesion_crop, lesion_descriptors
from ssl_rcc.health import effective_rank, representation_health


def test_box_crop_is_exact_where_no_resampling_is_needed_and_scales_a_cube(rng):
    data = rng.random((2, 40, 40, 40)).astype(np.float32)
    np.testing.assert_array_equal(box_crop(data, (19.5, 19.5, 19.5), 16, (16, 16, 16)), data[:, 12:28, 12:28, 12:28])
    cube = np.zeros((1, 60, 60, 60), np.float32)
    cube[0, 20:40, 20:40, 20:40] = 1.0
    centre, side = lesion_box(cube[0], margin=0.25)
    assert np.allclose(centre, 29.5) and side == pytest.approx(30.0)
    crop = box_crop(cube, centre, side, (24, 24, 24))
    # the cube fills 20/30 of each side: the middle 16 of the 24 output voxels, the ring around it empty
    assert crop[0, 4:20, 4:20, 4:20].min() > 0.99 and crop[0, :3].max() < 1e-6 and crop[0, :, :, 21:].max() < 1e-6


def test_the_scaled_crop_holds_the_whole_tumour_at_one_scale_whatever_its_size(tmp_path):
    from ssl_rcc.data.cases import read_case_table
    from ssl_rcc.phantoms import generate_phantoms

    table = read_case_table(generate_phantoms(tmp_path / "cases", n=6, seed=11, balanced=True, size=48, workers=1))
    config = PreprocessConfig(spacing_mm=(1.5,) * 3)
    fixed, scaled = [], []
    for _, row in table.iterrows():
        volume = read_nifti(row["ct"], case_id=row["case_id"])
        _, _, mask = preprocess_volume(volume, config, read_mask(row["tumor_mask"], volume).astype(np.uint8))
        crop, (_, side) = lesion_crop(mask[None].astype(np.float32), mask, (32,) * 3)
        inside = np.argwhere(mask)
        if inside.min() > 0 and (inside.max(axis=0) < np.array(mask.shape) - 1).all():  # clear of the image's edge
            # the whole tumour is in the crop: its volume there, in voxels of the volume, is the mask's
            assert crop.sum() * (side / 32) ** 3 == pytest.approx(mask.sum(), rel=0.05)
        scaled.append(crop.mean())
        fixed.append(centred_crop(mask[None].astype(np.float32), (32,) * 3, mask=mask).mean())
    # the tumour's share of the crop: constant but for its shape when scaled, set by its size when fixed
    assert np.std(scaled) / np.mean(scaled) < 0.5 * np.std(fixed) / np.mean(fixed)


def test_descriptors_and_tissue_crops_on_a_real_ct(abdomen_dir):
    volume = read_nifti(abdomen_dir / "example_ct_sm.nii.gz", case_id="ct")
    labels = np.asarray(nib.load(abdomen_dir / "example_seg.nii.gz").dataobj)
    assert read_mask(abdomen_dir / "example_seg.nii.gz", volume).shape == labels.shape  # the same grid
    kidney = labels == 2  # the right kidney as the "lesion"
    data, _, mask = preprocess_volume(volume, PreprocessConfig(spacing_mm=(1.5,) * 3), kidney.astype(np.uint8))
    found = lesion_descriptors(data, mask, 1.5)
    # this CT is unenhanced: the kidney's median HU, on the [-200, 300] HU window, above the fat around it
    hu = np.median(volume.data[0][kidney])
    assert found["level_c0"] == pytest.approx((hu + 200) / 500, abs=0.02) and found["ring_c0"] < found["level_c0"] - 0.05
    inside = np.percentile(volume.data[0][kidney], [25, 75])
    assert found["iqr_c0"] == pytest.approx((inside[1] - inside[0]) / 500, abs=0.02)
    # the ring mixes kidney edge, fat and vessels: more spread than the kidney's own voxels
    assert found["ring_sd_c0"] > found["iqr_c0"] / 1.349
    volume_ml = kidney.sum() * np.prod(volume.spacing_mm) / 1000
    assert found["diameter_mm"] == pytest.approx((6 * volume_ml * 1000 / np.pi) ** (1 / 3), rel=0.05)
    assert 40 < found["extent_mm"] < 160
    rng = np.random.default_rng(0)
    picks = [tissue_centre(data, rng) for _ in range(50)]
    values = np.array([data[0, p[0], p[1], p[2]] for p in picks if p is not None])
    assert len(values) == 50 and np.all((values > 0.25) & (values < 0.9))  # -75 to 250 HU: no air, fat, bone


def test_effective_rank_and_collapse():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(64, 128))
    assert effective_rank(spread) > 40 and representation_health(spread)["collapsed"] == 0
    collapsed = np.outer(rng.normal(size=64), rng.normal(size=128)) + 1e-6 * rng.normal(size=(64, 128))
    health = representation_health(collapsed)
    assert health["rankme"] < 2 and health["collapsed"] == 1
    dead = spread.copy()
    dead[:, :64] = 3.0
    assert representation_health(dead)["dead_fraction"] == 0.5 and representation_health(dead)["collapsed"] == 1


def test_the_lesion_region_gives_what_the_whole_volume_gives_and_is_cached(rng, tmp_path):
    from ssl_rcc.features.cache import FeatureCache
    from ssl_rcc.features.lesion import lesion_region, preprocessed_lesion
    from ssl_rcc.phantoms import generate_phantoms
    from ssl_rcc.data.cases import read_case_table

    data = rng.random((2, 50, 50, 50)).astype(np.float32)
    for box in ((slice(20, 30), slice(22, 26), slice(10, 18)), (slice(0, 6), slice(40, 50), slice(20, 30))):  # inside; at edges
        mask = np.zeros((50, 50, 50), bool)
        mask[box] = True
        part, part_mask = lesion_region(data, mask, 1.5)
        assert part.size < data.size
        np.testing.assert_array_equal(lesion_crop(part, part_mask, (16,) * 3)[0], lesion_crop(data, mask, (16,) * 3)[0])
        assert lesion_descriptors(part, part_mask, 1.5) == lesion_descriptors(data, mask, 1.5)
    table = read_case_table(generate_phantoms(tmp_path / "cases", n=1, seed=3, size=48, workers=1))
    row, cache = table.iloc[0].to_dict(), FeatureCache(tmp_path / "cache")
    config = PreprocessConfig()
    first = preprocessed_lesion(row, config, 4, cache=cache)
    assert len(list((tmp_path / "cache" / "lesion").glob("*.npz"))) == 1
    again = preprocessed_lesion(row, config, 4, cache=cache)
    uncached = preprocessed_lesion(row, config, 4)
    for a, b, c in zip(first, again, uncached):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_pretraining_views_of_a_lesion_are_its_cube_at_its_scale(rng):
    lesion = np.zeros((60, 60, 60), bool)
    lesion[20:40, 25:35, 30:45] = True
    centre, side = lesion_box(lesion)
    views = lesion_views(lesion, rng, 200)
    for at, view_side in views:
        assert LESION_VIEW_ZOOM[0] * side <= view_side <= LESION_VIEW_ZOOM[1] * side
        # a smaller view lies inside the lesion's cube, a larger one holds it
        assert np.all(np.abs(at - centre) <= abs(side - view_side) / 2 + 1e-9)
    sides = np.array([s for _, s in views])
    assert sides.max() - sides.min() > 0.1 * side  # not one fixed crop


def test_pretraining_crops_the_lesion_of_a_segmented_real_ct(abdomen_dir, tmp_path):
    """A real CT with a kidney mask and a lesion mask (here the left kidney stands for the lesion): the
    cache keeps both as one label map, and a lesion sample is the lesion's cube at the lesion's scale."""
    import shutil

    from ssl_rcc.data import build_cache
    from ssl_rcc.data.cache import KIDNEY, LESION, open_cache

    labels = nib.load(abdomen_dir / "example_seg.nii.gz")
    folder = tmp_path / "archive" / "case"
    folder.mkdir(parents=True)
    shutil.copy(abdomen_dir / "example_ct_sm.nii.gz", folder / "ct.nii.gz")
    seg = np.asarray(labels.dataobj)
    nib.save(nib.Nifti1Image(np.isin(seg, (2, 3)).astype(np.uint8), labels.affine), folder / "ct_kidney_mask.nii.gz")
    nib.save(nib.Nifti1Image((seg == 3).astype(np.uint8), labels.affine), folder / "ct_tumor_mask.nii.gz")
    config = PreprocessConfig(spacing_mm=(3.0,) * 3)
    build_cache(tmp_path / "archive", tmp_path / "cache", config=config, progress=False)
    data, mask = open_cache(tmp_path / "cache").load(0)
    volume = read_nifti(folder / "ct.nii.gz", case_id="ct")
    _, _, expected = preprocess_volume(volume, config, (seg == 3).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(mask) == LESION, expected > 0)
    assert (np.asarray(mask) == KIDNEY).sum() > 0.5 * (np.asarray(mask) == LESION).sum()  # the right kidney
    lesion = np.asarray(mask) == LESION
    inside = np.zeros_like(lesion, np.float32)[None] + lesion  # the lesion's own label as the image
    share = float(lesion_crop(inside, lesion, (16,) * 3)[0].mean())  # of the crop the heads embed
    views = [make_views(inside, mask, np.random.default_rng(seed), (16,) * 3, n_views=2, kidney_prob=0.0,
                        transform=None, scale=(0.75, 2.0), lesion_prob=lesion_prob)[0].float().mean()
             for lesion_prob in (1.0, 0.0) for seed in range(8)]
    # a lesion view shows the lesion at least as much as the embedded crop (it zooms into the cube); crops
    # of enhancing tissue show it far less
    assert min(views[:8]) > 0.9 * share and np.mean(views[8:]) < 0.5 * share


def test_the_lesion_block_is_the_descriptors_beside_an_embedding_only_image_block(tmp_path):
    from ssl_rcc.data.cases import read_case_table
    from ssl_rcc.features import compute_features
    from ssl_rcc.features.image import write_untrained_encoder
    from ssl_rcc.features.lesion import preprocessed_lesion
    from ssl_rcc.phantoms import generate_phantoms

    table = read_case_table(generate_phantoms(tmp_path / "cases", n=2, seed=5, size=48, workers=1))
    encoder = write_untrained_encoder(tmp_path / "enc", architecture="resnet10_slim", in_channels=4, patch=(16,) * 3,
                                      spacing_mm=3.0)
    blocks = compute_features(table, ["image", "lesion"], encoder=encoder, cache=tmp_path / "cache", workers=1,
                              progress=False)
    assert list(blocks["image"].columns) == [f"e{i}" for i in range(blocks["image"].shape[1])]
    row = table.iloc[0].to_dict()
    at_3mm = PreprocessConfig(spacing_mm=(3.0,) * 3)  # the encoder's preprocessing, not the default 1.5 mm
    expected = lesion_descriptors(*preprocessed_lesion(row, at_3mm, 4), 3.0)
    assert blocks["lesion"].iloc[0].to_dict() == pytest.approx(expected)
    alone = compute_features(table, ["lesion"], cache=tmp_path / "cache", workers=1, progress=False)["lesion"]
    default = lesion_descriptors(*preprocessed_lesion(row, PreprocessConfig(), None), 1.5)
    assert alone.iloc[0].to_dict() == pytest.approx(default) and alone.iloc[0]["diameter_mm"] > 0
