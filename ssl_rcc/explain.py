"""Why a head predicted what it did: 3D Grad-CAM of the image branch and attributions of the tabular blocks.

- :func:`block_importance`: for each feature block, the mean absolute change of the predicted class's
  probability when that block's rows are permuted among the cases (label-free permutation importance,
  so it works on new, unlabelled cases).
- :func:`top_features`: for the probe, each feature's term in the predicted class's logit
  (block weight x standardised value x coefficient; exact for a linear head), the largest first.
- :func:`gradcam_image`: MONAI's Grad-CAM of the image branch of a probe or an end-to-end head, for a
  ResNet encoder (at its third stage), mapped from the encoder's crop back onto the case's own image
  grid by :func:`gradcam_case`.

References
----------
Selvaraju RR et al. Grad-CAM: visual explanations from deep networks via gradient-based localization.
ICCV 2017. arXiv:1610.02391
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from torch import nn

from .errors import InputError

if TYPE_CHECKING:
    from .data import Volume

__all__ = ["block_importance", "top_features", "gradcam_image", "gradcam_case", "gradcam_figure", "image_branch"]


def _predicted(head, proba):
    if len(head.classes) == 2:
        return (proba[:, 1] >= head.threshold).astype(int)
    return proba.argmax(axis=1)


def block_importance(head, blocks: dict, *, repeats=10, seed=0) -> pd.DataFrame:
    """Mean |change| of the predicted class's probability when one block is permuted among the cases.

    Parameters
    ----------
    blocks : dict of str to (n, ...) ndarray
        The cases' blocks, as the head takes them.

    Returns
    -------
    DataFrame with columns block, importance (probability, 0-1), one row per block the head uses.
    """
    rng = np.random.default_rng(seed)
    base = head.predict_proba(blocks)
    cls = _predicted(head, base)
    rows = np.arange(len(base))
    out = []
    for b in head.blocks_used:
        changes = []
        for _ in range(repeats if len(base) > 1 else 0):
            shuffled = dict(blocks, **{b: blocks[b][rng.permutation(len(base))]})
            changes.append(np.abs(head.predict_proba(shuffled)[rows, cls] - base[rows, cls]).mean())
        out.append({"block": b, "importance": float(np.mean(changes)) if changes else float("nan")})
    return pd.DataFrame(out)


def top_features(head, blocks: dict, feature_names: dict, case_ids, *, k=5) -> pd.DataFrame:
    """The ``k`` features with the largest terms in each case's predicted-class logit (probe only).

    Returns
    -------
    DataFrame: case_id, rank, block, feature, value (as given), contribution (logit units; positive
    pushes towards the predicted class).
    """
    if head.protocol != "probe":
        raise InputError(f"top features: the {head.protocol} head is not linear in its features; use block importance.")
    proba = head.predict_proba(blocks)
    cls = _predicted(head, proba)
    rows = []
    for (subset, _, weight), (coef, _) in zip(head.members, head.coefs):
        if weight <= 0:
            continue
        x = head.scaler.transform(blocks, subset)
        names = [(b, n) for b in subset for n in feature_names[b]]
        raw = np.concatenate([np.asarray(blocks[b], float) for b in subset], axis=1)
        if coef.shape[0] == 1:  # binary: one logit, towards class 1
            terms = weight * x * coef[0] * np.where(cls == 1, 1.0, -1.0)[:, None]
        else:
            terms = weight * x * coef[cls]
        for i in range(len(x)):
            for j in np.argsort(-np.abs(terms[i]))[:k]:
                rows.append({"case_id": case_ids[i], "block": names[j][0], "feature": names[j][1],
                             "value": raw[i, j], "contribution": terms[i, j]})
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(["case_id", "contribution"], key=lambda c: -c.abs() if c.name == "contribution" else c)
    frame = frame.groupby("case_id", sort=False).head(k)
    frame.insert(1, "rank", frame.groupby("case_id").cumcount() + 1)
    return frame.reset_index(drop=True)


class _ProbeImageBranch(nn.Module):
    """crop -> encoder -> the probe's standardisation of the embedding columns -> their part of the image
    member's logits (the other columns are constant in the crop, so Grad-CAM does not see them; an
    embedding is always finite, so the scaler's median imputation has nothing to do here)."""

    def __init__(self, encoder, mean, scale, coef, intercept):
        super().__init__()
        self.encoder = encoder
        for name, value in dict(mean=mean, scale=scale, coef=coef, intercept=intercept).items():
            self.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=torch.float32))

    def forward(self, crops):
        z = (self.encoder(crops) - self.mean) / self.scale
        logits = z @ self.coef.T + self.intercept
        return torch.cat([-logits, logits], dim=1) / 2 if logits.shape[1] == 1 else logits


class _FinetuneImageBranch(nn.Module):
    def __init__(self, net, tabular):
        super().__init__()
        self.net = net
        self.register_buffer("tabular", torch.as_tensor(tabular, dtype=torch.float32))

    def forward(self, crops):
        return self.net(crops, self.tabular.expand(len(crops), -1))


def image_branch(head, encoder=None, tabular_row=None) -> nn.Module:
    """The part of ``head`` from a crop to class logits, for Grad-CAM (other blocks held fixed)."""
    if head.protocol == "finetune":
        return _FinetuneImageBranch(head.net, np.zeros((1, 0)) if tabular_row is None else tabular_row)
    if head.protocol != "probe" or "image" not in head.blocks_used:
        raise InputError(f"Grad-CAM: the {head.protocol} head has no differentiable image branch (use probe or finetune "
                         "with image features).")
    member = next(i for i, (s, _, w) in enumerate(head.members) if "image" in s and w > 0)
    subset = head.members[member][0]
    start = sum(len(head.scaler.stats[b][1]) for b in subset[:subset.index("image")])
    _, mean, scale = head.scaler.stats["image"]
    coef, intercept = head.coefs[member]
    d = encoder.out_dim  # the image block is the embedding (the lesion block holds what the crop cannot carry)
    return _ProbeImageBranch(encoder, mean, scale, coef[:, start:start + d], intercept)


def gradcam_image(branch: nn.Module, crop, class_index: int) -> np.ndarray:
    """Grad-CAM (X, Y, Z) in [0, 1] of ``branch`` for one (C, X, Y, Z) crop and one class."""
    from monai.visualize import GradCAM

    # layer3, not the last block: at the crop sizes used here (32-64 voxels) layer4's map is 2-4 cells a
    # side, too coarse to say which part of a tumour mattered; layer3's has twice the resolution
    layer = "encoder.net.layer3" if hasattr(branch, "encoder") else "net.encoder.net.layer3"
    names = dict(branch.named_modules())
    if layer not in names:
        raise InputError("Grad-CAM: the encoder is not a ResNet (a ViT has no convolutional feature map to explain).")
    branch.eval()
    with torch.enable_grad():
        cam = GradCAM(nn_module=branch, target_layers=layer)(torch.as_tensor(crop[None], dtype=torch.float32),
                                                               class_idx=int(class_index))
    cam = cam[0, 0].detach().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def gradcam_case(branch: nn.Module, row: Mapping[str, Any], meta: dict, class_index: int,
                 patch: ArrayLike) -> tuple[np.ndarray, Volume, np.ndarray]:
    """Grad-CAM of one case-table row on the case's own image grid.

    Returns
    -------
    cam : (X, Y, Z) float32 in [0, 1], on the grid of the row's image (resampled from the encoder's)
    volume : the case's :class:`~ssl_rcc.data.Volume`
    mask : (X, Y, Z) bool tumour mask on that grid
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to

    from .data import preprocess_volume, read_mask, read_nifti
    from .features.image import lesion_crop, preprocess_config

    volume = read_nifti(row.get("ct") or row.get("image"), case_id=str(row["case_id"]))
    mask = read_mask(row["tumor_mask"], volume)
    data, affine, small_mask = preprocess_volume(volume, preprocess_config(meta), mask.astype(np.uint8))
    crop, (centre, side) = lesion_crop(data, small_mask, patch)
    cam = gradcam_image(branch, crop, class_index)
    step = side / np.asarray(patch, float)  # crop voxel i sits at centre - side/2 + (i + 1/2) step
    to_volume = np.eye(4)
    to_volume[:3, :3] = np.diag(step)
    to_volume[:3, 3] = centre - side / 2.0 + step / 2.0
    on_case = resample_from_to(nib.Nifti1Image(cam.astype(np.float32), affine @ to_volume),
                               (volume.data.shape[1:], volume.affine), order=1, cval=0.0)
    return np.clip(np.asarray(on_case.dataobj, np.float32), 0, 1), volume, mask


def gradcam_figure(path: str | os.PathLike, volume: Volume, mask: np.ndarray, cam: np.ndarray, *, title: str) -> None:
    """Three orthogonal slices through the tumour's centre: the image (the corticomedullary phase of a
    4-phase CT), Grad-CAM over it, the tumour outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = volume.data[1 if len(volume.data) > 1 else 0]
    centre = np.round(np.argwhere(mask).mean(axis=0)).astype(int)
    window = (-200, 300) if volume.modality == "CT" else tuple(np.percentile(image, [1, 99]))
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), constrained_layout=True)
    for ax, axis, name in zip(axes, range(3), ("sagittal", "coronal", "axial")):
        take = lambda a: np.take(a, centre[axis], axis=axis).T  # noqa: E731
        ax.imshow(take(image), cmap="gray", vmin=window[0], vmax=window[1], origin="lower")
        overlay = ax.imshow(np.ma.masked_less(take(cam), 0.05), cmap="jet", vmin=0, vmax=1, alpha=0.45, origin="lower")
        ax.contour(take(mask.astype(float)), levels=[0.5], colors="white", linewidths=0.8)
        ax.set(title=name, xticks=[], yticks=[])
    fig.colorbar(overlay, ax=axes, shrink=0.8, label="Grad-CAM (relative)")
    if cam.max() <= 0:
        title += " - empty: the image gives no positive evidence for this class"
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
