"""Command line of ``ssl_rcc``: demo, phantoms, pretrain, embed, pack, finetune, predict, evaluate."""

from __future__ import annotations

import sys

from kinetics.cli import run_cli

from .recipes import OPTIONS


def demo(out="runs/demo", overwrite=False, seed=0) -> str:
    """Run the pipeline on built-in synthetic data and write a report with figures.

    Args:
        out: output directory (report.md, figures, intermediate files).
        overwrite: replace an existing output directory.
        seed: random seed of the synthetic data.
    """
    from .demo import run_demo

    return str(run_demo(out, overwrite=overwrite, seed=seed))


def phantoms(out, n=20, seed=0, unlabeled=False, balanced=False, preview=False, workers=None, size=96,
             overwrite=False, masks=None) -> str:
    """Write synthetic renal cases (multi-phase CT, DCE-MRI, masks, labels) and DIR/cases.csv.

    Args:
        out: output directory.
        n: number of cases (on disk about 8 MB each, 3.6 MB unlabeled; a progress bar shows the time left).
        seed: random seed; the same seed gives the same cases.
        unlabeled: CT volumes only (no labels or DCE), for pretraining.
        masks: write kidney and tumour masks (default: for labelled cases only); an unlabeled archive
            with masks stands for one segmented by a model, and lets pretraining crop the lesions.
        balanced: equal subtype frequencies instead of the surgical-series priors.
        preview: also write preview.png, a montage of a few cases per subtype.
        workers: processes (default: all cores).
        size: CT grid edge in voxels (field of view 144 mm).
        overwrite: replace an existing output directory.
    """
    from .phantoms import generate_phantoms

    return str(generate_phantoms(out, n=n, seed=seed, unlabeled=unlabeled, balanced=balanced, preview=preview,
                                 workers=workers, size=size, overwrite=overwrite, masks=masks, progress=True))


def pretrain(data, method, out, resume=False, overwrite=False, cache=None, probe=None, hash_ids=False, **options) -> str:
    """Self-supervised pretraining of a 3D encoder on an unlabeled CT/MR archive.

    Options left out take the recipe's value (see README, "Pretraining recipe") or, with --resume, the
    run's own (from its run.json); given ones must then equal the run's.

    Args:
        data: folder (NIfTI files and DICOM series, recursively), CSV with an image (or ct) column, or a
            folder of TFRecord shards written by `pack` (streamed; tf extra).
        method: simclr | byol | dino | mae.
        out: run directory: checkpoints/last.ckpt, encoder.pt, encoder.json, metrics.csv, run.json, tb/.
        resume: continue RUN from checkpoints/last.ckpt.
        overwrite: replace an existing run directory.
        cache: preprocessing cache directory (default RUN/cache).
        probe: a small labelled case table (ct, tumor_mask, subtype): logs a k-NN accuracy (val_knn_acc).
        hash_ids: name NIfTI images by a hash of their path rather than their file stem (in the cache's
            manifest and skip report), for archives whose file names carry identifiers.
    """
    from .pretrain import pretrain as run

    return str(run(data, method=method, out=out, resume=resume, overwrite=overwrite, cache=cache, probe=probe,
                   hash_ids=hash_ids, **options))


def _with_options(command, options):
    """``command`` (whose ``**options`` takes them) with ``options`` in its signature and its help: fire
    and the unknown-option check read both, so the table of options is their one source."""
    import inspect
    import textwrap

    signature = inspect.signature(command)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=o.default) for name, o in options.items()]
    command.__signature__ = signature.replace(parameters=params)
    lines = [textwrap.fill(f"{name}: {o.help}", 100, initial_indent=" " * 8, subsequent_indent=" " * 12)
             for name, o in options.items()]
    command.__doc__ = command.__doc__.rstrip() + "\n" + "\n".join(lines) + "\n    "
    return command


_with_options(pretrain, OPTIONS)


def embed(encoder, data, out, batch_size=8, overwrite=False, hash_ids=False) -> str:
    """Embeddings of every image (or tumour) with a pretrained encoder, as a parquet table.

    Args:
        encoder: RUN/encoder.pt (with encoder.json beside it).
        data: folder of images, or a CSV (a case table with tumor_mask embeds the crop scaled to each tumour).
        out: output parquet file: case_id, e0, e1, ...
        batch_size: crops per forward pass.
        overwrite: replace an existing output file.
        hash_ids: name rows by a hash of each image's path (file names that carry identifiers).
    """
    from .embed import embed_archive

    return str(embed_archive(encoder, data, out=out, batch_size=batch_size, overwrite=overwrite, hash_ids=hash_ids))


def pack(data, out, spacing=1.5, shards=None, shard_mb=512, seed=0, overwrite=False, cache=None, workers=None,
         hash_ids=False) -> str:
    """Preprocess an archive into sharded TFRecord files that `pretrain --data OUT` streams (tf extra).

    Args:
        data: folder (NIfTI files and DICOM series, recursively) or CSV with an image (or ct) column.
        out: folder for shard-NNNNN-of-NNNNN.tfrecord files, index.json and skipped.csv.
        spacing: voxel size after resampling, mm.
        shards: number of shards (default: about shard_mb MiB each); use at least GPUs x loader workers.
        shard_mb: target shard size, MiB, when shards is not given.
        seed: seed of the order of images over the shards.
        overwrite: replace an existing pack.
        cache: keep the preprocessing cache here (default: a temporary one).
        workers: preprocessing processes (default: all cores).
        hash_ids: name NIfTI images by a hash of their path rather than their file stem (in skipped.csv).
    """
    from .data.shards import pack as run

    return str(run(data, out, spacing=spacing, shards=shards, shard_mb=shard_mb, seed=seed, overwrite=overwrite,
                   cache=cache, workers=workers, hash_ids=hash_ids))


def finetune(cases, task, out, encoder=None, features="image,lesion", protocol="probe", shots="all", repeats=20, test_site=None,
             seed=0, cache=None, workers=None, architecture="resnet10_slim", patch=32, spacing=1.5, n_boot=200, epochs=30, lr=1e-3,
             batch_size=8, overwrite=False) -> str:
    """Few-label head for a task, evaluated on repeated draws against each feature block alone.

    Args:
        cases: case table (CSV): one row a lesion, labels, image, masks, DCE or kinetic maps.
        task: subtype | malignant | grade | invasion.
        out: output directory: metrics.json, predictions.csv, model/, roc.png, reliability.png,
            confusion.png (label_curve.png for several shots), report.md.
        encoder: RUN/encoder.pt for the image block, or none for an untrained encoder of --architecture.
        features: feature blocks, any of image,lesion,kinetic,radiomic: image the encoder's embedding of the
            tumour, lesion its size and per-phase levels and spreads (no encoder needed); with the probe
            each block is its own logistic regression, fused late by its inner cross-validated AUC.
        protocol: probe (logistic regression, C and blocks by inner cross-validation) | knn (cosine) |
            finetune (the encoder trained end to end with a linear head over it and the tabular blocks).
        shots: labelled training cases per class: K, all, or a list such as 5,10,20,all.
        repeats: draws of the training cases (the same for every feature set: paired comparisons).
        test_site: train on the other sites and test on this one (external validation).
        seed: seed of the draws, bootstrap and untrained encoder.
        cache: feature cache directory (default ~/.cache/ssl-rcc/features).
        workers: processes for the radiomic and kinetic features (default: all cores).
        architecture: encoder architecture of --encoder none (default: the CPU recipe's, as pretrain).
        patch: crop size (voxels) of --encoder none.
        spacing: voxel size (mm) of --encoder none.
        n_boot: bootstrap resamples of each draw's test cases.
        epochs: finetune: most epochs (early stopping on an inner fifth of the training cases).
        lr: finetune: learning rate of the head (the encoder's is a tenth, after 2 frozen epochs).
        batch_size: finetune: crops per step.
        overwrite: replace an existing output directory.
    """
    from .finetune import run_finetune

    return str(run_finetune(cases, task=task, out=out, encoder=encoder, features=features, protocol=protocol, shots=shots,
                            repeats=repeats, test_site=test_site, seed=seed, cache=cache, workers=workers,
                            architecture=architecture, patch=patch, spacing=spacing, n_boot=n_boot, epochs=epochs, lr=lr,
                            batch_size=batch_size, overwrite=overwrite))


def predict(model, cases, out, explain=False, cache=None, workers=None, overwrite=False) -> str:
    """Class probabilities for new cases with a saved model (finetune's DIR/model).

    Args:
        model: the model directory.
        cases: case table of the new cases (the columns the model's features need; no labels).
        out: output CSV: case_id, site, p_<class>..., predicted, threshold, task.
        explain: also write OUT_explain/: block importance, top features (probe), and per case a
            Grad-CAM NIfTI on the case grid and PNG slices through the tumour (image features, ResNet).
        cache: feature cache directory (default ~/.cache/ssl-rcc/features).
        workers: processes for the radiomic and kinetic features.
        overwrite: replace an existing output file.
    """
    from .finetune import predict_cases

    return str(predict_cases(model, cases, out=out, explain=explain, cache=cache, workers=workers, overwrite=overwrite))


def evaluate(predictions, cases, out, n_boot=1000, seed=0, overwrite=False) -> str:
    """Metrics with bootstrap intervals of saved predictions against a labelled case table (another site).

    Args:
        predictions: predict's CSV.
        cases: case table with the labels of the predicted cases.
        out: output directory: metrics.json, roc.png, reliability.png, confusion.png, report.md.
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap.
        overwrite: replace an existing output directory.
    """
    from .finetune import evaluate_predictions

    return str(evaluate_predictions(predictions, cases, out=out, n_boot=n_boot, seed=seed, overwrite=overwrite))


COMMANDS = {"demo": demo, "phantoms": phantoms, "pretrain": pretrain, "embed": embed, "pack": pack, "finetune": finetune,
            "predict": predict, "evaluate": evaluate}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input prints one sentence and exits 2 (``--debug`` shows the traceback)."""
    return run_cli(COMMANDS, sys.argv[1:] if argv is None else argv, "ssl_rcc")


if __name__ == "__main__":
    sys.exit(main())
