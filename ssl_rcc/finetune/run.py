"""``finetune``, ``predict`` and ``evaluate``: case table in, metrics, predictions, a model and a report out.

Every input is checked, and the features computed, before anything is written; outputs go to a
temporary folder renamed at the end, so a failed run leaves nothing in ``--out``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kinetics.io import output_directory, output_file
from kinetics.options import number
from kinetics.provenance import command_line, git_commit

from .. import __version__
from ..data.cases import read_case_table
from ..errors import InputError
from ..features import block_columns, compute_features, default_cache_dir, parse_blocks, preprocessing_for
from ..features.cache import file_digest
from ..features.radiomic import SETTINGS_FILE
from .draws import few_label_draws, parse_shots
from .evaluation import evaluate_draws, head_factory
from .heads import PROTOCOLS
from .metrics import bootstrap_metrics, point_metrics, summarise
from .model import load_model, save_model
from .report import METRIC_NAMES, fmt, label_curve, markdown_report, write_figures
from .tasks import get_task

__all__ = ["run_finetune", "predict_cases", "evaluate_predictions"]

log = logging.getLogger("ssl_rcc")


def _encoder_path(encoder, blocks, table, *, architecture, patch, spacing, seed, work):
    """The encoder.pt of the image block: the given one, or with ``none`` an untrained one of
    ``architecture`` written under ``work`` (the from-scratch baseline); None without an image block."""
    if "image" not in blocks:
        return None
    if encoder is None:
        raise InputError("encoder: the image block needs --encoder RUN/encoder.pt, or none for an untrained encoder.")
    if str(encoder) == "none":
        from ..data.volume import read_nifti
        from ..features.image import write_untrained_encoder

        first = table.iloc[0]
        channels = read_nifti(first["ct"] or first["image"], case_id=first["case_id"]).data.shape[0]
        patch = number(patch, "patch", "voxels", integer=True, positive=True)
        spacing = number(spacing, "spacing", "mm", positive=True)
        return write_untrained_encoder(work / f"untrained-{architecture}-{channels}ch-{patch}-{spacing:g}mm-seed{seed}",
                                       architecture=architecture, in_channels=channels, patch=(patch,) * 3,
                                       spacing_mm=spacing, seed=seed)
    from ..embed import load_encoder

    load_encoder(encoder)  # one sentence now for a bad encoder, before any feature is computed
    return Path(encoder)


def _image_column_check(table, blocks):
    if {"image", "lesion", "radiomic"} & set(blocks) and not ({"ct", "image"} & set(table.columns)):
        raise InputError(f"{table.attrs['source']}: image, lesion and radiomic features need a ct (or image) column.")


def _required(blocks, task):
    columns = {task.column}
    for b in blocks:
        columns.update(block_columns(b))
    return tuple(sorted(columns))


def _labelled_table(cases, task, blocks):
    table = read_case_table(cases)
    labels = task.labels(table)
    table = table[labels != ""].reset_index(drop=True)
    labels = labels[labels != ""].reset_index(drop=True)
    if len(table) == 0:
        raise InputError(f"{cases}: no case has a {task.name} label.")
    table.attrs["source"] = Path(cases).name
    _image_column_check(table, blocks)
    for column in _required(blocks, task):
        if column not in table.columns:
            raise InputError(f"{cases}: {', '.join(blocks)} features for task {task.name} need the column {column!r}.")
        empty = table[column].astype(str) == ""
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise InputError(f"{cases}: case {table['case_id'].iat[i]} has no {column}.")
    for column in ("ct", "image", "tumor_mask", "kidney_mask", "dce_tumor_mask"):
        if column in table.columns:
            for case, path in zip(table["case_id"], table[column]):
                if path and not Path(path).is_file():
                    raise InputError(f"{cases}: the {column} file of case {case} ({Path(path).name}) is missing.")
    return table, labels.to_numpy()


def _summary(result, name):
    return {m: result["sets"][name][m] for m in METRIC_NAMES if m in result["sets"][name]}


def _metrics_for(result, *, task, blocks, protocol, shots, repeats, test_site):
    main = result["main"]
    out = {"task": task.name, "classes": list(task.classes), "features": list(blocks), "protocol": protocol,
           "shots": shots, "repeats": repeats, "test_site": test_site, "n_train": result["n_train"],
           "n_test": result["n_test"], **_summary(result, main), "per_site": result["per_site"],
           "blocks_chosen": result["chosen"], "baselines": {}}
    for b, diff in result["differences"].items():
        out["baselines"][b] = dict(_summary(result, b), auc_difference_fusion_minus_block=diff)
    return out


PROTOCOL_NAMES = tuple(sorted(PROTOCOLS)) + ("finetune",)


def _block_arrays(table, blocks, protocol, encoder_pt, *, cache, workers, progress):
    """(arrays {block: (n, ...)}, feature names {block: list}): embeddings, or tumour crops for the
    end-to-end protocol, beside the tabular blocks."""
    tabular = [b for b in blocks if b != "image"] if protocol == "finetune" else list(blocks)
    frames = compute_features(table, tabular, encoder=encoder_pt, cache=cache, workers=workers, progress=progress)
    arrays = {b: frames[b].to_numpy() for b in tabular}
    names = {b: list(frames[b].columns) for b in tabular}
    if protocol == "finetune":
        from ..embed import load_encoder
        from ..features import FeatureCache
        from ..features.image import tumour_crops

        model, meta = load_encoder(encoder_pt)
        lesions = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        arrays["image"] = tumour_crops(table, model, meta, progress=progress, cache=lesions)
        names["image"] = ["tumour crop " + "x".join(str(s) for s in arrays["image"].shape[1:])]
    return {b: arrays[b] for b in blocks}, {b: names[b] for b in blocks}


def _finetune_options(encoder_pt, epochs, lr, batch_size):
    from ..embed import load_encoder

    model, _ = load_encoder(encoder_pt)
    return {"encoder_config": model.config(), "encoder_state": model.state_dict(),
            "epochs": number(epochs, "epochs", integer=True, positive=True), "lr": number(lr, "lr", positive=True),
            "batch_size": number(batch_size, "batch_size", integer=True, positive=True)}


def run_finetune(cases: str | os.PathLike, *, task: str, out: str | os.PathLike,
                 encoder: str | os.PathLike | None = None, features: str | Sequence[str] = "image,lesion",
                 protocol: str = "probe", shots: int | str | Sequence[int | str] = "all", repeats: int = 20,
                 test_site: str | None = None, seed: int = 0, cache: str | os.PathLike | None = None,
                 workers: int | None = None, architecture: str = "resnet10_slim", patch: int = 32,
                 spacing: float = 1.5, n_boot: int = 200, epochs: int = 30, lr: float = 1e-3, batch_size: int = 8,
                 overwrite: bool = False, progress: bool = True) -> Path:
    """Few-label evaluation of a head and the model of all labels; returns ``out``.

    See ``python -m ssl_rcc finetune --help``. Writes metrics.json, predictions.csv, model/, ROC,
    reliability and confusion PNGs (and label_curve.png for several shots) and report.md.
    """
    task = get_task(task)
    blocks = parse_blocks(features)
    if protocol not in PROTOCOL_NAMES:
        raise InputError(f"protocol: unknown protocol {protocol!r}; expected one of {sorted(PROTOCOL_NAMES)}.")
    if protocol == "finetune" and "image" not in blocks:
        raise InputError("protocol: finetune trains the encoder; add image to --features (with --encoder RUN/encoder.pt or none).")
    shots_list = parse_shots(shots)
    repeats = number(repeats, "repeats", integer=True, positive=True)
    seed = number(seed, "seed", integer=True, low=0)
    n_boot = number(n_boot, "n_boot", integer=True, low=20)
    test_site = None if test_site in (None, "") else str(test_site)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: output directory exists; choose another or pass --overwrite.")
    table, labels = _labelled_table(cases, task, blocks)
    sites = table["site"].to_numpy(dtype=str)
    for shots_value in shots_list:  # one sentence for too few cases, before any feature is computed
        few_label_draws(labels, sites, classes=task.classes, shots=shots_value, repeats=1, test_site=test_site)
    cache_dir = default_cache_dir() if cache is None else Path(cache)
    encoder_pt = _encoder_path(encoder, blocks, table, architecture=architecture, patch=patch, spacing=spacing,
                               seed=seed, work=cache_dir / "encoders")
    options = _finetune_options(encoder_pt, epochs, lr, batch_size) if protocol == "finetune" else None
    arrays, feature_names = _block_arrays(table, blocks, protocol, encoder_pt, cache=cache_dir, workers=workers,
                                          progress=progress)
    results = {}
    for shots_value in shots_list:
        log.info("%s, %s on %s: %s labelled cases per class, %d draws", task.name, protocol, "+".join(blocks),
                 shots_value, repeats)
        results[str(shots_value)] = evaluate_draws(arrays, labels, sites, classes=task.classes, protocol=protocol,
                                                   shots=shots_value, repeats=repeats, seed=seed, test_site=test_site,
                                                   n_boot=n_boot, case_ids=table["case_id"].to_numpy(),
                                                   head_options=options)
    final_rows = labels != "" if test_site is None else sites != test_site
    final = head_factory(protocol, options)(task.classes, seed=seed).fit({b: arrays[b][final_rows] for b in blocks},
                                                                         labels[final_rows])
    metrics = {s: _metrics_for(r, task=task, blocks=blocks, protocol=protocol, shots=s if s == "all" else int(s),
                               repeats=repeats, test_site=test_site) for s, r in results.items()}
    provenance = {"ssl_rcc_version": __version__, "git_commit": git_commit(), "command": command_line("ssl_rcc"),
                  "cases_sha1": file_digest(cases), "seed": seed, "n_boot": n_boot,
                  "encoder_sha1": file_digest(encoder_pt) if encoder_pt else None,
                  "encoder": None if encoder_pt is None else ("none (untrained)" if str(encoder) == "none" else Path(encoder).name)}
    settings = {"radiomics_settings_sha1": file_digest(SETTINGS_FILE), "kinetic_model": "extended_tofts",
                "lesion_preprocessing": preprocessing_for(encoder_pt).to_dict() if "lesion" in blocks else None,
                "test_site": test_site, "architecture": architecture if str(encoder) == "none" else None}
    with output_directory(out, overwrite=overwrite) as tmp:
        if len(metrics) == 1:
            document = dict(next(iter(metrics.values())), provenance=provenance)
            write_figures(tmp, next(iter(results.values())), task)
        else:
            document = {"task": task.name, "features": list(blocks), "protocol": protocol, "repeats": repeats,
                        "by_shots": metrics, "provenance": provenance}
            for s, r in results.items():
                write_figures(tmp, r, task, suffix=f"_{s}")
            label_curve(tmp / "label_curve.png", results, task)
        (tmp / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False, default=_jsonable))
        predictions = pd.concat([r["predictions"].assign(shots=s) for s, r in results.items()], ignore_index=True)
        predictions.to_csv(tmp / "predictions.csv", index=False, float_format="%.6g")
        save_model(tmp / "model", final, task=task.name, blocks=blocks, feature_names=feature_names,
                   encoder=encoder_pt, settings=settings, provenance=provenance)
        (tmp / "report.md").write_text(markdown_report(metrics, task, blocks, protocol, provenance["command"], len(metrics) > 1))
    log.info("wrote %s", out)
    return out


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not np.isfinite(value) else float(value)
    raise TypeError(type(value))


def predict_cases(model: str | os.PathLike, cases: str | os.PathLike, *, out: str | os.PathLike, explain: bool = False,
                  overwrite: bool = False, cache: str | os.PathLike | None = None, workers: int | None = None,
                  progress: bool = True) -> Path:
    """Class probabilities for the cases of a table with a saved model; writes ``out`` (CSV).

    With ``explain``, also ``OUT_explain/`` (beside ``out``): block_importance.csv, top_features.csv
    (probe) and, for image features with a ResNet encoder (probe or finetune), per case a Grad-CAM
    NIfTI on the case's image grid and a PNG of three slices through the tumour.
    """
    description, head = load_model(model)
    task = get_task(description["task"])
    blocks = tuple(description["blocks"])
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: output file exists; choose another or pass --overwrite.")
    explain_dir = out.with_name(out.name[: -len(out.suffix)] + "_explain" if out.suffix else out.name + "_explain")
    if explain and explain_dir.exists() and not overwrite:
        raise InputError(f"{explain_dir}: output directory exists; choose another --out or pass --overwrite.")
    settings = description.get("settings", {})
    if "radiomic" in blocks and settings.get("radiomics_settings_sha1") != file_digest(SETTINGS_FILE):
        raise InputError(f"{model}: the model's radiomic features were made with other PyRadiomics settings than this "
                         "version of ssl-rcc uses.")
    encoder = Path(model) / "encoder.pt" if "image" in blocks else None
    recorded = settings.get("lesion_preprocessing")  # None in models saved before it was recorded
    if "lesion" in blocks and recorded is not None and json.loads(json.dumps(preprocessing_for(encoder).to_dict())) != recorded:
        raise InputError(f"{model}: the model's lesion features were preprocessed otherwise than this version of ssl-rcc "
                         "would preprocess them; run finetune again.")
    table = read_case_table(cases)
    _image_column_check(table, blocks)
    for b in blocks:
        for column in block_columns(b):
            if column not in table.columns or (table[column] == "").any():
                raise InputError(f"{cases}: the model uses {b} features, which need {column} for every case.")
    arrays, names = _block_arrays(table, blocks, head.protocol, encoder, cache=default_cache_dir() if cache is None else cache,
                                  workers=workers, progress=progress)
    for b in blocks:
        if names[b] != description["feature_names"][b]:
            raise InputError(f"{cases}: the cases' {b} features differ from the model's (another number of channels?).")
    proba = head.predict_proba({b: arrays[b] for b in head.blocks_used})
    frame = pd.DataFrame(proba, columns=[f"p_{c}" for c in task.classes])
    if task.binary:
        predicted = np.where(proba[:, 1] >= head.threshold, task.classes[1], task.classes[0])
    else:
        predicted = np.array(task.classes)[proba.argmax(1)]
    frame.insert(0, "site", table["site"].to_numpy())
    frame.insert(0, "case_id", table["case_id"].to_numpy())
    frame["predicted"] = predicted
    frame["threshold"] = head.threshold
    frame["task"] = task.name
    frame["model_sha1"] = file_digest(Path(model) / "head.json")[:12]  # which saved head made these
    if explain:
        with output_directory(explain_dir, overwrite=overwrite) as tmp:
            _explain(tmp, head, arrays, description, table, Path(model), task)
    with output_file(out, overwrite=overwrite) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    log.info("predicted %s for %d cases: %s", task.name, len(frame), out)
    return out


def _explain(folder, head, arrays, description, table, model, task):
    """Attributions of the tabular blocks and Grad-CAM of the image branch, into ``folder``."""
    from kinetics.io import save_image

    from ..explain import block_importance, gradcam_case, gradcam_figure, image_branch, top_features

    used = {b: arrays[b] for b in head.blocks_used}
    block_importance(head, used).to_csv(folder / "block_importance.csv", index=False, float_format="%.4g")
    if head.protocol == "probe":
        top_features(head, used, description["feature_names"], table["case_id"].to_numpy()).to_csv(
            folder / "top_features.csv", index=False, float_format="%.4g")
    if "image" not in head.blocks_used or head.protocol == "knn":
        return
    from ..embed import load_encoder

    encoder, meta = load_encoder(model / "encoder.pt")
    proba = head.predict_proba(used)
    predicted = (proba[:, 1] >= head.threshold).astype(int) if task.binary else proba.argmax(1)
    for i, (_, row) in enumerate(table.iterrows()):
        tabular = head._tabular({b: arrays[b][i:i + 1] for b in head.blocks_used}) if head.protocol == "finetune" else None
        branch = image_branch(head, encoder, tabular)
        cam, volume, mask = gradcam_case(branch, dict(row), meta, int(predicted[i]), tuple(meta["patch"]))
        save_image(folder / f"{row['case_id']}_gradcam.nii.gz", cam, volume.affine)
        gradcam_figure(folder / f"{row['case_id']}_gradcam.png", volume, mask, cam,
                       title=f"{row['case_id']}: Grad-CAM for {task.classes[predicted[i]]} ({task.name})")


def evaluate_predictions(predictions: str | os.PathLike, cases: str | os.PathLike, *, out: str | os.PathLike,
                         n_boot: int = 1000, seed: int = 0, overwrite: bool = False) -> Path:
    """Metrics of saved predictions (``predict``'s CSV) against the labels of a case table; writes ``out``."""
    predictions = Path(predictions)
    if not predictions.is_file():
        raise InputError(f"{predictions}: predictions file not found.")
    try:
        frame = pd.read_csv(predictions, dtype={"case_id": str, "site": str}, keep_default_na=False)
    except Exception as err:
        raise InputError(f"{predictions}: cannot read the predictions as CSV ({type(err).__name__}).") from None
    if "task" not in frame.columns or "case_id" not in frame.columns or frame.empty:
        raise InputError(f"{predictions}: not a predictions file of ssl_rcc predict (it needs case_id, task and p_* columns).")
    task = get_task(str(frame["task"].iat[0]))
    columns = [f"p_{c}" for c in task.classes]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{predictions}: the {task.name} predictions lack the column(s) {missing}.")
    n_boot = number(n_boot, "n_boot", integer=True, low=20)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: output directory exists; choose another or pass --overwrite.")
    table = read_case_table(cases)
    labels = task.labels(table).set_axis(table["case_id"])
    unknown = sorted(set(frame["case_id"]) - set(table["case_id"]))
    if unknown:
        raise InputError(f"{cases}: the predicted case {unknown[0]!r} is not in the case table.")
    frame = frame[labels.loc[frame["case_id"]].to_numpy() != ""].reset_index(drop=True)
    y = np.array([task.classes.index(v) for v in labels.loc[frame["case_id"]]])
    if len(np.unique(y)) < 2:
        raise InputError(f"{cases}: the predicted cases have {len(np.unique(y))} {task.name} class; metrics need two.")
    proba = frame[columns].to_numpy(float)
    threshold = float(frame["threshold"].iat[0]) if "threshold" in frame.columns else 0.5
    resamples = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    sites = table.set_index("case_id").loc[frame["case_id"], "site"].to_numpy(dtype=str)
    summary = summarise([point_metrics(y, proba, threshold, len(task.classes))],
                        [bootstrap_metrics(y, proba, threshold, len(task.classes), resamples)])
    from .evaluation import _per_site

    result = {"main": "predictions", "records": {"predictions": [(y, proba, threshold)]}}
    document = {"task": task.name, "classes": list(task.classes), "n_test": int(len(y)), **summary,
                "per_site": _per_site([(y, proba, threshold, sites, resamples)], len(task.classes)),
                "provenance": {"ssl_rcc_version": __version__, "git_commit": git_commit(),
                               "command": command_line("ssl_rcc"), "predictions_sha1": file_digest(predictions),
                               "cases_sha1": file_digest(cases), "n_boot": n_boot, "seed": seed}}
    with output_directory(out, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False, default=_jsonable))
        write_figures(tmp, result, task)
        lines = ["# Evaluation of saved predictions", "", f"Task **{task.name}**, {len(y)} labelled cases, "
                 f"95% intervals from {n_boot} bootstrap resamples.", "", "| metric | value |", "|---|---|"]
        lines += [f"| {m} | {fmt(summary[m])} |" for m in METRIC_NAMES if m in summary]
        lines += ["", "![ROC](roc.png) ![Calibration](reliability.png) ![Confusion](confusion.png)", ""]
        (tmp / "report.md").write_text("\n".join(lines))
    log.info("wrote %s", out)
    return out
