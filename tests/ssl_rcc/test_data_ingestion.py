"""Ingestion on real abdominal scans: NIfTI CT and MR with kidney masks, a DICOM CT series.

Data: TotalSegmentator test files (github wasserth/TotalSegmentator, tests/reference_files, commit
0e65a448, Apache-2.0), in ../shared/reference-data/abdomen: label 2 = right kidney, 3 = left kidney.
"""

import logging
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ssl_rcc.data import PreprocessConfig, build_cache, preprocess_volume, read_dicom_series, read_nifti, scan_archive
from ssl_rcc.data.cache import open_cache
from ssl_rcc.data.crops import crop_start
from ssl_rcc.errors import InputError



@pytest.fixture
def abdomen(abdomen_dir):
    return abdomen_dir


def world_centroid(mask, affine):
    idx = np.argwhere(mask > 0).mean(axis=0)
    return affine[:3, :3] @ idx + affine[:3, 3]


@pytest.mark.parametrize("image, seg, modality", [("example_ct_sm.nii.gz", "example_seg.nii.gz", "CT"),
                                                  ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MR")])
def test_preprocessing_keeps_the_kidneys_in_place(abdomen, image, seg, modality):
    volume = read_nifti(abdomen / image)
    assert volume.modality == modality
    seg_img = nib.load(str(abdomen / seg))
    kidneys = np.isin(np.asarray(seg_img.dataobj), [2, 3])
    before = world_centroid(kidneys, volume.affine)
    data, affine, mask = preprocess_volume(volume, PreprocessConfig(spacing_mm=(1.5, 1.5, 1.5)), kidneys)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), 1.5, rtol=1e-3)
    np.testing.assert_allclose(np.array(data.shape[1:]) * 1.5, np.array(volume.data.shape[1:]) * 3.0, atol=1.5)
    np.testing.assert_allclose(world_centroid(mask, affine), before, atol=1.0)  # mm
    assert data.dtype == np.float32 and data.min() >= 0.0 and data.max() <= 1.0
    if modality == "CT":  # HU window (-200, 300) -> [0, 1]
        raw = np.median(volume.data[0][kidneys])
        assert np.median(data[0][mask > 0]) == pytest.approx((raw + 200) / 500, abs=0.05)
    else:  # robust percentiles: about 1% clipped at each end
        assert 0.005 < np.mean(data == 0.0) < 0.2 and 0.005 < np.mean(data == 1.0) < 0.03


def test_dicom_series_geometry_and_hounsfield_units(abdomen, tmp_path):
    files = sorted((abdomen / "example_ct_dicom").iterdir())
    volume = read_dicom_series(files)
    shuffled = read_dicom_series(list(np.random.default_rng(0).permutation(files)))
    np.testing.assert_array_equal(volume.data, shuffled.data)
    assert volume.data.shape == (1, 512, 512, 20) and volume.modality == "CT"
    import pydicom

    positions = np.array(sorted((pydicom.dcmread(str(f)).ImagePositionPatient for f in files), key=lambda p: p[2]), float)
    step = np.median(np.diff(positions[:, 2]))  # the slices overlap: 2 mm apart, 3 mm thick
    np.testing.assert_allclose(volume.spacing_mm, (0.9765625, 0.9765625, step), rtol=1e-4)
    assert nib.aff2axcodes(volume.affine) == ("L", "P", "S")  # DICOM rows/columns run along L and P
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose((volume.affine @ [0, 0, 0, 1.0])[:3], positions[0] * lps_to_ras, atol=1e-6)
    np.testing.assert_allclose((volume.affine @ [0, 0, 19, 1.0])[:3], positions[-1] * lps_to_ras, atol=1e-6)
    hu = volume.data[0]
    assert hu.min() <= -1000 and -100 < np.median(hu[hu > -500]) < 150  # air outside, soft tissue inside
    data, affine, _ = preprocess_volume(volume, PreprocessConfig(spacing_mm=(3.0, 3.0, 3.0)))
    assert nib.aff2axcodes(affine) == ("R", "A", "S") and data.shape[1:] == (167, 167, round(20 * step / 3.0))


def test_kidney_centred_crops_lie_in_the_kidney(abdomen):
    volume = read_nifti(abdomen / "example_ct_sm.nii.gz")
    kidneys = np.isin(np.asarray(nib.load(str(abdomen / "example_seg.nii.gz")).dataobj), [2, 3])
    data, _, mask = preprocess_volume(volume, PreprocessConfig(spacing_mm=(3.0, 3.0, 3.0)), kidneys)
    rng = np.random.default_rng(0)
    patch = np.array([32, 32, 16])
    for _ in range(100):
        start = crop_start(data.shape[1:], patch, rng, mask=mask)
        assert np.all(start >= 0) and np.all(start + patch <= data.shape[1:])
        centre = start + patch // 2
        assert mask[tuple(centre)]
    with pytest.raises(InputError, match="larger than the image"):
        crop_start(data.shape[1:], (200, 32, 32), rng)


@pytest.fixture
def archive(abdomen, tmp_path):
    root = tmp_path / "archive"
    (root / "ct").mkdir(parents=True)
    shutil.copy(abdomen / "example_ct_sm.nii.gz", root / "ct" / "patient_ct.nii.gz")
    shutil.copy(abdomen / "example_mr_sm.nii.gz", root / "mr.nii.gz")
    shutil.copytree(abdomen / "example_ct_dicom", root / "dicom" / "series1")
    (root / "broken.nii.gz").write_bytes(b"this is not an image")
    (root / "dicom" / "notes.dat").write_text("a stray file")
    return root


def test_cache_builds_skips_bad_files_and_is_reused(archive, tmp_path):
    config = PreprocessConfig(spacing_mm=(3.0, 3.0, 3.0))
    cached = build_cache(archive, tmp_path / "cache", config=config, workers=2, progress=False)
    assert len(cached) == 3 and set(cached.manifest["case_id"]) >= {"patient_ct", "mr"}
    skipped = pd.read_csv(tmp_path / "cache" / "skipped.csv")
    assert len(skipped) == 2 and any("cannot read as NIfTI" in r for r in skipped["reason"])
    data, mask = cached.load(0)
    assert data.dtype == np.float16 and data.ndim == 4 and mask is None
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npy")}
    reopened = open_cache(tmp_path / "cache")  # what DDP's other processes on the node read
    assert (reopened.manifest.astype(str).values == cached.manifest.astype(str).values).all()
    again = build_cache(archive, tmp_path / "cache", config=config, workers=1, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npy")} == stamps
    pd.testing.assert_frame_equal(again.manifest, cached.manifest)
    other = build_cache(archive, tmp_path / "cache", config=PreprocessConfig(spacing_mm=(4.0, 4.0, 4.0)), workers=1, progress=False)
    assert set(other.manifest["key"]).isdisjoint(cached.manifest["key"])  # a new config is a new entry


def test_csv_archive_with_kidney_masks(abdomen, tmp_path):
    pd.DataFrame({"image": [str(abdomen / "example_ct_sm.nii.gz")], "kidney_mask": [str(abdomen / "example_seg.nii.gz")]}).to_csv(
        tmp_path / "list.csv", index=False)
    cached = build_cache(tmp_path / "list.csv", tmp_path / "cache", config=PreprocessConfig(spacing_mm=(3.0, 3.0, 3.0)), progress=False)
    data, mask = cached.load(0)
    assert mask is not None and mask.shape == data.shape[1:] and mask.sum() > 1000


def test_no_patient_identifier_reaches_outputs_or_logs(abdomen, tmp_path, caplog):
    import pydicom

    secrets = ["Doe^Jane", "MRN-483920", "19700101", "1.2.826.0.1.3680043.99.12345"]
    series = tmp_path / "archive" / "Doe^Jane_MRN-483920"  # even the folder name is identifying
    series.mkdir(parents=True)
    for f in sorted((abdomen / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(str(f))
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.SeriesInstanceUID = secrets
        ds.save_as(str(series / f.name))
    broken = tmp_path / "archive" / "Doe^Jane_MRN-483920_old"
    broken.mkdir()
    (broken / "Doe^Jane.nii.gz").write_bytes(b"not an image")  # skipped: its reason must not name it
    (broken / "MRN-483920.dcm").write_bytes(b"not DICOM either")
    caplog.set_level(logging.DEBUG)
    cached = build_cache(tmp_path / "archive", tmp_path / "cache", config=PreprocessConfig(spacing_mm=(4.0, 4.0, 4.0)),
                         progress=False, hash_ids=True)  # NIfTI file names carry identifiers here
    assert len(cached) == 1 and cached.manifest["case_id"][0].startswith("dicom-")
    assert len(pd.read_csv(tmp_path / "cache" / "skipped.csv")) == 2
    written = " ".join(p.name for p in (tmp_path / "cache").iterdir())
    written += " ".join(p.read_text() for p in (tmp_path / "cache").glob("*.csv"))
    written += (tmp_path / "cache" / "config.json").read_text() + caplog.text
    for secret in secrets + ["Doe", "483920"]:
        assert secret not in written


def test_an_archive_with_nothing_usable_is_one_clear_error(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.nii.gz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="no usable image among 1 files"):
        build_cache(tmp_path / "junk", tmp_path / "cache", progress=False)
    with pytest.raises(InputError, match="no such folder"):
        scan_archive(tmp_path / "missing")


def test_bad_voxels_masks_and_tags_are_skipped_or_mended_with_a_reason(abdomen, tmp_path):
    import pydicom

    ct = nib.load(str(abdomen / "example_ct_sm.nii.gz"))
    archive = tmp_path / "archive"
    archive.mkdir()
    data = np.asarray(ct.dataobj, np.float32).copy()
    data[:, :, :3] = np.nan  # outside a reconstruction's field of view
    data[0, 0, 5] = np.inf
    nib.save(nib.Nifti1Image(data, ct.affine), str(archive / "nan.nii.gz"))
    seg = nib.load(str(abdomen / "example_seg.nii.gz"))
    shifted = ct.affine.copy()
    shifted[:3, 3] += 30.0  # a mask of another scan: same shape, 30 mm away
    for name, mask in [("shifted", nib.Nifti1Image(np.asarray(seg.dataobj), shifted)), ("broken", None)]:
        shutil.copy(abdomen / "example_ct_sm.nii.gz", archive / f"{name}.nii.gz")
        if mask is None:
            (archive / f"{name}_mask.nii.gz").write_bytes(b"not a mask")
        else:
            nib.save(mask, str(archive / f"{name}_mask.nii.gz"))
    dicom = archive / "dicom"
    dicom.mkdir()
    for f in sorted((abdomen / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(str(f))
        ds.RescaleSlope = "1"
        ds.save_as(str(dicom / f.name))
    ds.add_new((0x0028, 0x1053), "LO", "one")  # RescaleSlope that is not a number, on the last slice
    ds.save_as(str(dicom / f.name))
    rows = [{"image": str(archive / "nan.nii.gz")}] + [
        {"image": str(archive / f"{n}.nii.gz"), "kidney_mask": str(archive / f"{n}_mask.nii.gz")} for n in ("shifted", "broken")]
    pd.DataFrame(rows).to_csv(tmp_path / "list.csv", index=False)
    cached = build_cache(tmp_path / "list.csv", tmp_path / "cache", config=PreprocessConfig(spacing_mm=(4.0,) * 3),
                         progress=False)
    assert cached.manifest["case_id"].tolist() == ["nan"]
    assert np.isfinite(np.asarray(cached.load(0)[0], np.float32)).all()
    reasons = " ".join(pd.read_csv(tmp_path / "cache" / "skipped.csv")["reason"])
    assert "the mask's affine differs from its image's" in reasons and "cannot read the mask as NIfTI" in reasons
    with pytest.raises(InputError, match="cannot read as a DICOM image slice"):
        read_dicom_series(sorted(dicom.iterdir()))


def test_folder_scans_pair_masks_and_name_repeated_stems_without_folders(abdomen, tmp_path):
    for folder in ("Doe^Jane", "Roe^Richard"):  # identifying folder names, the same file stem in each
        (tmp_path / "archive" / folder).mkdir(parents=True)
        shutil.copy(abdomen / "example_ct_sm.nii.gz", tmp_path / "archive" / folder / "ct.nii.gz")
    shutil.copy(abdomen / "example_seg.nii.gz", tmp_path / "archive" / "Doe^Jane" / "ct_kidney_mask.nii.gz")
    (tmp_path / "archive" / "loose").mkdir()
    shutil.copy(abdomen / "example_seg.nii.gz", tmp_path / "archive" / "loose" / "mask.nii.gz")  # no image beside it
    shutil.copy(abdomen / "example_seg.nii.gz", tmp_path / "archive" / "Roe^Richard" / "tumor_mask.nii.gz")
    shutil.copy(abdomen / "example_seg.nii.gz", tmp_path / "archive" / "Roe^Richard" / "liver_mask.nii.gz")
    dicom = tmp_path / "archive" / "series"
    shutil.copytree(abdomen / "example_ct_dicom", dicom)
    (dicom / "README").write_text("exported by a PACS")  # a stray file in a series folder
    items, rejected = scan_archive(tmp_path / "archive")
    by_id = {item.case_id: item for item in items}
    assert len(items) == 3 and "ct" in by_id and by_id["ct"].mask.endswith("ct_kidney_mask.nii.gz")
    other = next(i for i in items if i.kind == "nifti" and i.case_id != "ct")
    assert other.mask is None and "Roe" not in other.case_id and "Doe" not in other.case_id
    assert other.lesion_mask.endswith("tumor_mask.nii.gz") and by_id["ct"].lesion_mask is None
    reasons = [r for _, r in rejected]
    assert "a mask file without one image to pair with in its folder" in reasons
    assert ("a mask that is neither a kidney mask (*kidney_mask, IMAGE_mask) nor a lesion mask (*tumor_mask, "
            "*lesion_mask)") in reasons
    pd.DataFrame({"image": ["series", "", "Doe^Jane/ct.nii.gz"]}).to_csv(tmp_path / "archive" / "list.csv", index=False)
    items, rejected = scan_archive(tmp_path / "archive" / "list.csv")
    assert [i.kind for i in items] == ["dicom", "nifti"] and not any("README" in f for f in items[0].files)
    assert [r for _, r in rejected] == ["row 3 has no image path"]


def test_segmentations_not_named_as_masks_are_skipped_not_trained_on(abdomen, tmp_path):
    """TotalSegmentator and nnU-Net write *_seg.nii.gz or segmentation.nii.gz: label maps, not images."""
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(abdomen / "example_ct_sm.nii.gz", archive / "ct.nii.gz")
    shutil.copy(abdomen / "example_mr_sm.nii.gz", archive / "mr.nii.gz")
    shutil.copy(abdomen / "example_seg.nii.gz", archive / "ct_seg.nii.gz")
    cached = build_cache(archive, tmp_path / "cache", config=PreprocessConfig(spacing_mm=(4.0,) * 3), progress=False)
    assert sorted(cached.manifest["case_id"]) == ["ct", "mr"]
    reasons = pd.read_csv(tmp_path / "cache" / "skipped.csv")["reason"].tolist()
    assert len(reasons) == 1 and "a label map (" in reasons[0] and "not an image; name masks *kidney_mask" in reasons[0]
