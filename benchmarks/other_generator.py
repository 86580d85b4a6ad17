"""The radiomic probe against a first-order logistic regression, on lesions of another generator.

    python -m benchmarks.other_generator [--n 160] [--repeats 10] [--work DIR]

The heads were built on the project's phantoms; this checks them on lesions made differently. Lesions
are inserted into a real CT (the TotalSegmentator test scan in ../shared/reference-data/abdomen, 3 mm,
single phase; development data, not needed by the product) inside either kidney, by a generator
written only for this check: an ellipsoid whose surface is perturbed by low-frequency noise, filled
with a Gaussian random field. Two classes differ, with overlapping distributions, slightly in mean
attenuation (45 vs 50 HU, SD 15 across lesions), in texture only through its grain (field correlation
length 0.8 vs 1.3 voxels at the same 20 HU amplitude, so the same histogram) and in margin
irregularity (0.12 vs 0.22). First-order statistics see little of that; texture and shape features
should. (A first version, with 15 HU and amplitude differences, put both near AUC 1.0.) Then, on the same draws (5, 10, 20 labels per class and
all): the heads' probe on the full radiomic block (PyRadiomics, the product's settings), and a plain
logistic regression on the first-order features only (the probe on that block). Writes
``benchmarks/results/other_generator.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results")
ABDOMEN = Path(__file__).resolve().parents[2] / "shared" / "reference-data" / "abdomen"
CLASSES = {"a": {"hu": 45.0, "length": 0.8, "amplitude": 20.0, "irregularity": 0.12},
           "b": {"hu": 50.0, "length": 1.3, "amplitude": 20.0, "irregularity": 0.22}}


def insert_lesion(ct, kidney, rng, params):
    """(image, lesion mask): ``ct`` (X, Y, Z) HU with one lesion of ``params`` centred in a random voxel
    of ``kidney``."""
    from scipy import ndimage

    shape = np.array(ct.shape)
    centre = np.argwhere(kidney)[rng.integers(kidney.sum())]
    radii = rng.uniform(3.0, 6.0, size=3)  # voxels (9-18 mm)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1) - centre
    r = np.sqrt(((grid / radii) ** 2).sum(axis=-1))
    bumps = ndimage.gaussian_filter(rng.normal(size=tuple(shape)), 2.0)
    bumps /= bumps.std() + 1e-9
    mask = r < 1.0 + params["irregularity"] * bumps
    mask = ndimage.binary_opening(mask) & (r < 2.0)
    mask = mask if mask.sum() >= 20 else r < 1.0
    field = ndimage.gaussian_filter(rng.normal(size=tuple(shape)), params["length"])
    field /= field[mask].std() + 1e-9
    level = rng.normal(params["hu"], 15.0)
    image = ct.copy()
    image[mask] = level + params["amplitude"] * field[mask] + rng.normal(0, 5.0, size=mask.sum())
    return image, mask


def make_cases(out, n, seed):
    """Write ``n`` cases (NIfTI CT and lesion mask, balanced classes) and a case table; returns its path."""
    import nibabel as nib
    import pandas as pd

    ct_img = nib.load(ABDOMEN / "example_ct_sm.nii.gz")
    ct = np.asarray(ct_img.dataobj, np.float32)
    kidneys = np.isin(np.asarray(nib.load(ABDOMEN / "example_seg.nii.gz").dataobj), (2, 3))
    kidneys = kidneys & (np.indices(ct.shape)[2] >= 6) & (np.indices(ct.shape)[2] < ct.shape[2] - 6)  # room in z
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = "ab"[i % 2]
        image, mask = insert_lesion(ct, kidneys, rng, CLASSES[label])
        nib.save(nib.Nifti1Image(image.astype(np.int16), ct_img.affine), out / f"case{i:03d}_ct.nii.gz")
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), ct_img.affine), out / f"case{i:03d}_lesion.nii.gz")
        rows.append({"case_id": f"case{i:03d}", "site": "site_a", "lesion_class": label,
                     "ct": f"case{i:03d}_ct.nii.gz", "tumor_mask": f"case{i:03d}_lesion.nii.gz"})
    pd.DataFrame(rows).to_csv(out / "cases.csv", index=False)
    return out / "cases.csv"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--work", default=None)
    args = parser.parse_args(argv)

    from ssl_rcc.data.cases import read_case_table
    from ssl_rcc.features import compute_features
    from ssl_rcc.finetune import evaluate_draws

    work = Path(args.work or tempfile.mkdtemp(prefix="other-generator-"))
    cases = work / "cases" / "cases.csv"
    if not cases.is_file():
        make_cases(work / "cases", args.n, args.seed)
    table = read_case_table(cases)
    radiomic = compute_features(table, ["radiomic"], cache=work / "features", progress=False)["radiomic"]
    first_order = radiomic[[c for c in radiomic.columns if "firstorder" in c]]
    labels = table["lesion_class"].to_numpy(dtype=str)
    sites = table["site"].to_numpy(dtype=str)
    results = {}
    for shots in (5, 10, 20, "all"):
        row = {}
        for name, block in (("radiomic probe", radiomic), ("first-order logistic regression", first_order)):
            r = evaluate_draws({"x": block.to_numpy()}, labels, sites, classes=("a", "b"), protocol="probe", shots=shots,
                               repeats=args.repeats, seed=args.seed, n_boot=100)
            row[name] = r["sets"]["x"]["auc"]
        results[str(shots)] = row
        print(shots, {k: round(v["mean"], 3) for k, v in row.items()}, flush=True)
    RESULTS.mkdir(exist_ok=True)
    document = {"settings": vars(args), "classes": CLASSES, "n_features": {"radiomic": radiomic.shape[1],
                                                                          "first_order": first_order.shape[1]}, "auc": results}
    (RESULTS / "other_generator.json").write_text(json.dumps(document, indent=2))
    print("| labels per class | radiomic probe | first-order logistic regression |")
    print("|---|---|---|")
    for shots, row in results.items():
        print(f"| {shots} | " + " | ".join(f"{v['mean']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
