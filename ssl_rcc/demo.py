"""``make demo``: the whole pipeline on built-in synthetic data, with a report a person can read.

At this stage: (1) the DCE-MRI kinetics pipeline on a digital reference object (signal series ->
VFA T10 map -> concentration -> extended Tofts maps), checked against the truth at OSIPI tolerances;
(2) synthetic renal cases (multi-phase CT, DCE-MRI, masks, labels) with a montage, and the kinetics
fit of one case's tumour against its true maps; (3) a short self-supervised pretraining run (SimCLR,
3D ResNet-18) on an unlabeled phantom archive, and tumour embeddings of the labelled cases; (4) a
few-label head (malignant vs benign) fusing image, kinetic and radiomic features, evaluated on
repeated draws against each block alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("ssl_rcc")


def run_demo(out: str | os.PathLike, *, overwrite: bool = False, seed: int = 0) -> Path:
    """Run the demo into directory ``out`` and return the path of its ``report.md``."""
    import nibabel as nib

    from kinetics.dro import make_dro, write_dro
    from kinetics.io import output_directory
    from kinetics.tolerance import within_tolerance
    from kinetics.t1map import t1_map
    from kinetics.workflow import fit_dce

    from .report import map_figure, markdown_table

    out = Path(out)
    with output_directory(out, overwrite=overwrite) as tmp:
        log.info("demo 1/5: kinetics on a digital reference object")
        start = time.perf_counter()
        dro = make_dro(seed=seed)
        dro_dir = write_dro(dro, tmp / "dro")
        meta = json.loads((dro_dir / "dro.json").read_text())
        t10_path = t1_map(dro_dir / "vfa.nii.gz", meta["vfa_fa_deg"], tr=meta["tr_s"], out=tmp / "t10.nii.gz")
        maps_dir = fit_dce(
            dro_dir / "dce.nii.gz", dro_dir / "times.txt", dro_dir / "aif.csv", out=tmp / "maps",
            model="extended_tofts", input="signal", t10=t10_path, tr=meta["tr_s"], fa=meta["fa_deg"],
            r1=meta["r1_per_mM_s"], baseline=meta["baseline_frames"],
        )
        elapsed = time.perf_counter() - start
        fitted = {k: np.asarray(nib.load(str(maps_dir / f"{k}.nii.gz")).dataobj) for k in ("ktrans", "ve", "vp")}
        t10 = np.asarray(nib.load(str(t10_path)).dataobj)
        rows, within = [], {}
        for name in ("ktrans", "ve", "vp"):
            within[name] = float(np.mean(within_tolerance(name, fitted[name], dro.truth[name])))
        for kt in np.unique(dro.truth["ktrans"]):
            for ve in np.unique(dro.truth["ve"]):
                sel = (dro.truth["ktrans"] == kt) & (dro.truth["ve"] == ve)
                rows.append([kt, float(np.nanmedian(fitted["ktrans"][sel])), ve, float(np.nanmedian(fitted["ve"][sel]))])
        r1_err = np.abs(1.0 / t10 - 1.0 / dro.truth["t10"])
        map_figure(
            tmp / "ktrans.png",
            [("true Ktrans (/min)", dro.truth["ktrans"], 0, 0.4, "viridis"),
             ("fitted Ktrans (/min)", fitted["ktrans"], 0, 0.4, "viridis"),
             ("|error| (/min)", np.abs(fitted["ktrans"] - dro.truth["ktrans"]), 0, 0.05, "magma")],
            title="Extended Tofts on the DRO (slice vp = 0.02)",
        )
        report = [
            "# ssl-rcc demo report",
            "",
            _provenance_line(),
            "",
            "## DCE-MRI kinetics on a digital reference object",
            "",
            f"A {dro.signal.shape[0]}x{dro.signal.shape[1]}x{dro.signal.shape[2]} voxel DRO with "
            f"{dro.signal.shape[3]} frames ({dro.times_s[1] - dro.times_s[0]:g} s apart), SPGR signal at SNR 60, "
            "Parker AIF, T10 varying +-20% across x. Pipeline: VFA T10 map (nonlinear) -> signal to "
            "concentration -> extended Tofts (nonlinear least squares seeded by Murase LLSQ).",
            "",
            f"Run time of the pipeline: {elapsed:.1f} s.",
            "",
            f"- T10 map: R1 within the OSIPI tolerance (0.05 /s + 5%) in "
            f"{100 * np.mean(r1_err <= 0.05 + 0.05 / dro.truth['t10']):.1f}% of voxels.",
        ]
        report += [f"- {k}: within the OSIPI tolerance in {100 * v:.1f}% of voxels." for k, v in within.items()]
        report += ["", "![Ktrans maps](ktrans.png)", "", "Median fitted values per block (all vp slices):", ""]
        report.append(markdown_table(["true Ktrans (/min)", "fitted Ktrans", "true ve", "fitted ve"], rows))
        log.info("demo 2/5: synthetic renal cases and one tumour's kinetics")
        phantom_report, phantom_summary = _phantom_section(tmp, seed)
        report += [line.replace("docs/phantoms.md", _docs_link(out, "phantoms.md")) for line in phantom_report]
        log.info("demo 3/5: self-supervised pretraining (the longest part: a progress bar follows)")
        pretrain_report, pretrain_summary = _pretraining_section(tmp, seed)
        report += pretrain_report
        log.info("demo 4/5: a few-label fusion head, then 5/5: Grad-CAM")
        finetune_report, finetune_summary = _finetune_section(tmp, seed)
        report += finetune_report
        (tmp / "report.md").write_text("\n".join(report) + "\n")
        summary = {"within_osipi": within, "seconds": elapsed, "phantoms": phantom_summary, "pretraining": pretrain_summary,
                   "finetune": finetune_summary}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    _repoint(out, staged=tmp)
    log.info("report: %s", out / "report.md")
    return out / "report.md"


def _provenance_line():
    """Version, commit, command and date of this report (a reader must be able to rerun it)."""
    from datetime import datetime, timezone

    from kinetics.provenance import provenance

    from . import __version__

    made = provenance("ssl_rcc")
    commit = made["git_commit"] or "not a git checkout"
    return (f"ssl-rcc {__version__} (commit {commit}), `{made['command']}`, "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Every figure below is recomputed by that command.")


def _docs_link(out, name):
    """A link from the report in ``out`` to ``docs/NAME`` of the source tree, where there is one."""
    import os

    docs = Path(__file__).resolve().parents[1] / "docs" / name
    if not docs.is_file():
        return f"docs/{name} in the ssl-rcc repository"
    return f"[docs/{name}]({Path(os.path.relpath(docs, Path(out).resolve()))})"


def _repoint(out, *, staged):
    """The JSON records (run.json, metrics.json) name the staging folder the demo was written in before
    it was renamed to ``out``: point them at ``out``, where those files now are."""
    old, new = str(Path(staged)), str(Path(out))
    for path in Path(out).rglob("*.json"):
        text = path.read_text()
        if old in text:
            path.write_text(text.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))


def _phantom_section(tmp, seed, n=10):
    """Generate a few synthetic cases (subtypes equally likely), show them, and fit one tumour's DCE series."""
    import nibabel as nib
    import pandas as pd

    from kinetics.tolerance import within_tolerance
    from kinetics.workflow import fit_dce

    from .phantoms import generate_phantoms
    from .report import markdown_table

    start = time.perf_counter()
    table_path = generate_phantoms(tmp / "phantoms", n=n, seed=seed, balanced=True, preview=True)
    seconds = time.perf_counter() - start
    table = pd.read_csv(table_path, keep_default_na=False)
    root = table_path.parent
    row = table[table["subtype"] == "ccrcc"].iloc[0] if (table["subtype"] == "ccrcc").any() else table.iloc[0]
    maps = fit_dce(root / row["dce"], root / row["dce_times"], root / row["aif"], out=tmp / "phantom_maps",
                   input="signal", t10=root / row["t10"], tr=row["tr_s"], fa=row["fa_deg"], r1=row["r1"],
                   baseline=int(row["baseline_frames"]), mask=root / row["dce_tumor_mask"])
    mask = np.asarray(nib.load(str(root / row["dce_tumor_mask"])).dataobj) > 0
    truth = np.asarray(nib.load(str(root / row["ktrans_true"])).dataobj)[mask]
    fitted = np.asarray(nib.load(str(maps / "ktrans.nii.gz")).dataobj)[mask]
    within = float(np.mean(within_tolerance("ktrans", fitted, truth)))
    # one row per subtype (the balance the text states), with its high-grade and invading cases
    high = table["grade"] == "high"  # empty for benign tumours, which have no ISUP grade
    invading = table["invasion"] == "yes"
    counts = (table.assign(high_grade=high, invading=invading).groupby("subtype")
              .agg(cases=("case_id", "size"), high_grade_ISUP_3_4=("high_grade", "sum"),
                   perinephric_invasion=("invading", "sum")).reset_index())
    lines = [
        "",
        "## Synthetic renal cases",
        "",
        f"{n} cases (each subtype drawn with equal probability) in {seconds:.1f} s: four-phase CT (96^3 at 1.5 mm), DCE-MRI, kidney and "
        "tumour masks, labels. Values and sources: docs/phantoms.md.",
        "",
        "![Synthetic cases](phantoms/preview.png)",
        "",
        markdown_table(list(counts.columns), counts.values.tolist()),
        "",
        f"Extended Tofts fit of case {row['case_id']} ({row['subtype']}, site {row['site']}, with breathing motion): "
        f"tumour Ktrans within the OSIPI tolerance in {100 * within:.1f}% of {mask.sum()} voxels "
        f"(median true {np.median(truth):.3f} /min, fitted {np.nanmedian(fitted):.3f} /min).",
    ]
    return lines, {"n": n, "seconds": seconds, "ktrans_within_osipi": within}


def _pretraining_section(tmp, seed, steps=24):
    """Pretrain briefly on an unlabeled archive, then embed the labelled cases' tumours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from .data.views import LESION_PROB
    from .embed import embed_archive
    from .health import COLLAPSE_RANK
    from .phantoms import generate_phantoms
    from .pretrain import pretrain

    # with kidney and lesion masks, as a segmentation model would give them: pretraining crops the lesions
    archive = generate_phantoms(tmp / "archive", n=8, seed=seed + 1, unlabeled=True, masks=True, size=64).parent
    start = time.perf_counter()
    # the CPU recipe (resnet10_slim, 32^3 crops scaled 0.75-2x at 1.5 mm) at a demo's batch size
    run = pretrain(archive, method="simclr", out=tmp / "pretrain", max_steps=steps, batch_size=16, recipe="cpu",
                   checkpoint_every=steps, workers=0, seed=seed, progress=True, probe_every=steps // 2)
    seconds = time.perf_counter() - start
    options = json.loads((run / "run.json").read_text())
    embeddings = embed_archive(run / "encoder.pt", tmp / "phantoms" / "cases.csv", out=tmp / "embeddings.parquet", progress=False)
    table = pd.read_parquet(embeddings)
    labels = pd.read_csv(tmp / "phantoms" / "cases.csv", keep_default_na=False).set_index("case_id").loc[table["case_id"]]
    x = table.drop(columns="case_id").to_numpy()
    x = x - x.mean(axis=0)
    coords = np.linalg.svd(x, full_matrices=False)[0][:, :2] if len(x) > 2 else np.zeros((len(x), 2))
    metrics = pd.read_csv(run / "metrics.csv")
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), constrained_layout=True)
    axes[0].plot(metrics["step"], metrics["train_loss"], marker="o")
    axes[0].set(xlabel="step", ylabel="NT-Xent loss", title="pretraining loss")
    health = metrics.dropna(subset=["rankme"])
    rank = float(health["rankme"].iloc[-1])
    k = max(1, min(5, len(metrics) // 4))
    loss_start, loss_end = float(metrics["train_loss"].iloc[:k].mean()), float(metrics["train_loss"].iloc[-k:].mean())
    for subtype in sorted(set(labels["subtype"])):
        sel = (labels["subtype"] == subtype).to_numpy()
        axes[1].scatter(coords[sel, 0], coords[sel, 1], label=subtype)
    axes[1].set(title="tumour embeddings (PCA)", xticks=[], yticks=[])
    axes[1].legend(fontsize=7)
    fig.savefig(tmp / "pretraining.png", dpi=100)
    plt.close(fig)
    lines = [
        "",
        "## Self-supervised pretraining",
        "",
        f"SimCLR ({options['recipe']} recipe: {options['architecture']}, {options['patch'][0]}^3 crops at "
        f"{options['spacing_mm']:g} mm, temperature {options['temperature']:g}; {100 * LESION_PROB:.0f}% of the samples "
        "views of the tumour's cube (the archive has kidney and lesion masks, as a segmentation model gives them), "
        f"the others {options['crop_scale'][0]:g}-{options['crop_scale'][1]:g}x the crop centred on the kidney, "
        "each resampled to the crop) on 8 unlabeled phantom CTs (4 phases as channels), "
        f"{options['steps_trained']} steps of {options['batch_size']} volumes in {seconds:.0f} s on this machine; the "
        f"embeddings of a fixed set of crops had an effective rank of {rank:.1f} after the last step (below "
        f"{COLLAPSE_RANK:g} would be a collapse). Then the embeddings ({x.shape[1]} features) of the {len(table)} "
        "labelled cases' tumours, each crop scaled to its tumour. "
        f"The loss went from {loss_start:.2f} to {loss_end:.2f} (means of the first and last {k} steps; it "
        f"{'fell' if loss_end < loss_start else 'did not fall'}). What a run this short can show: that the pipeline works "
        "end to end on CPU, that the loss moves and the embedding has not collapsed. What it cannot show: that the "
        "encoder learnt anything useful about tumours; `python -m benchmarks.ssl_value` measures that against the "
        "same encoder untrained after a 10-20 minute CPU run (figures in the README).",
        "",
        "![Pretraining](pretraining.png)",
    ]
    return lines, {"steps": int(options["steps_trained"]), "seconds": seconds, "final_loss": float(metrics["train_loss"].iloc[-1]),
                   "effective_rank": rank, "n_embedded": int(len(table))}


def _finetune_section(tmp, seed, repeats=10):
    """A few-label fusion head (malignant vs benign) on the demo's labelled cases, against each block."""
    from .finetune import run_finetune
    from .report import markdown_table

    start = time.perf_counter()
    out = run_finetune(tmp / "phantoms" / "cases.csv", task="malignant", out=tmp / "finetune",
                       encoder=tmp / "pretrain" / "encoder.pt", features="image,lesion,kinetic,radiomic", shots="all",
                       repeats=repeats, seed=seed, cache=tmp / "feature-cache", n_boot=100, progress=False)
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())

    def cell(m):
        return "-" if m["mean"] is None else f"{m['mean']:.2f} [{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}]"

    rows = [["image+lesion+kinetic+radiomic", cell(metrics["auc"]), cell(metrics["balanced_accuracy"]), cell(metrics["ece"])]]
    rows += [[b, cell(m["auc"]), cell(m["balanced_accuracy"]), cell(m["ece"])] for b, m in metrics["baselines"].items()]
    lines = [
        "",
        "## Few-label head: malignant (ccRCC, pRCC, chRCC) vs benign (oncocytoma, fat-poor AML)",
        "",
        f"`python -m ssl_rcc finetune --task malignant --features image,lesion,kinetic,radiomic --shots all --repeats {repeats}` "
        f"on the {metrics['n_train'] + metrics['n_test']} labelled cases above, in {seconds:.0f} s: each draw trains a "
        "class-balanced logistic regression per feature block (C chosen by inner cross-validation on the training "
        f"half only; the blocks weighed by their inner AUC) on {metrics['n_train']} cases and tests it on the other {metrics['n_test']}. Intervals are 95% over "
        f"the {repeats} draws and a bootstrap of each test half. With this few cases the intervals are wide: the "
        "demo shows the method and its outputs, not a result (the README's label-efficiency table gives figures on 200 cases).",
        "",
        markdown_table(["features", "AUC", "balanced accuracy", "ECE"], rows),
        "",
        "![ROC](finetune/roc.png) ![Calibration](finetune/reliability.png)",
        "",
        "Full report of this head: [finetune/report.md](finetune/report.md).",
    ]
    lines += _gradcam_lines(tmp, seed)
    return lines, {"seconds": seconds, "auc": metrics["auc"], "baselines": {b: m["auc"] for b, m in metrics["baselines"].items()}}


def _gradcam_lines(tmp, seed):
    """One Grad-CAM: an image-only probe on the pretrained encoder, explained on one labelled case."""
    from .data.cases import read_case_table
    from .embed import load_encoder
    from .explain import gradcam_case, gradcam_figure, image_branch
    from .finetune import load_model, run_finetune

    out = run_finetune(tmp / "phantoms" / "cases.csv", task="malignant", out=tmp / "finetune_image",
                       encoder=tmp / "pretrain" / "encoder.pt", features="image", shots="all", repeats=2, seed=seed,
                       cache=tmp / "feature-cache", n_boot=50, progress=False)
    _, head = load_model(out / "model")
    encoder, meta = load_encoder(out / "model" / "encoder.pt")
    table = read_case_table(tmp / "phantoms" / "cases.csv")
    row = table[table["subtype"] == "ccrcc"].iloc[0] if (table["subtype"] == "ccrcc").any() else table.iloc[0]
    row = row.to_dict()
    from .features.image import image_features

    embedding = np.array([list(image_features(row, encoder, meta).values())])
    predicted = int(head.predict_proba({"image": embedding})[0, 1] >= head.threshold)
    for shown in (predicted, 1 - predicted):  # Grad-CAM keeps positive evidence only: one class has some
        cam, volume, mask = gradcam_case(image_branch(head, encoder), row, meta, shown, tuple(meta["patch"]))
        if cam.max() > 0:
            break
    label = head.classes[shown]
    gradcam_figure(tmp / "gradcam.png", volume, mask, cam, title=f"{row['case_id']} ({row['subtype']}): Grad-CAM for {label}")
    note = "" if shown == predicted else (f" The probe's prediction for this case is {head.classes[predicted]}; Grad-CAM "
                                          f"shows positive evidence only, and the image's points to {label}.")
    return ["", "### Grad-CAM of the image branch", "",
            f"Where the image-only probe on the pretrained encoder finds evidence for {label} in case "
            f"{row['case_id']} ({row['subtype']}) (`python -m ssl_rcc predict --explain` writes one per case, as NIfTI on "
            "the case grid and as PNG): Grad-CAM at the encoder's third stage, relative to its maximum, over the "
            "corticomedullary phase, tumour outlined. A demo-trained encoder is close to its initialisation, so the "
            "map shows the mechanics, not learnt tumour features." + note, "", "![Grad-CAM](gradcam.png)"]
