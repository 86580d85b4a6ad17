"""AUC against labelled cases per class for every feature block, fused, and the image encoder
pretrained vs untrained, on synthetic cases of a seed no test uses.

    python -m benchmarks.label_efficiency [--n 200] [--archive 200] [--steps 450] [--minutes 18] [--repeats 10]
                                          [--device cpu] [--encoder RUN/encoder.pt]

Steps: an unlabeled archive (with kidney and lesion masks, as a segmentation model would give them)
and a labelled case table (balanced subtypes) are generated; SimCLR with the device's recipe is
pretrained on the archive (``--encoder`` reuses a finished run instead, e.g. ``benchmarks.ssl_value``'s)
and the untrained encoder of the same recipe and seed is exported (``--max-steps 0``); features are computed
once and cached; then for each task and each of 5, 10, 20 labels per class and all (stratified halves),
the probe is evaluated on the same draws for: radiomic, kinetic, lesion, image (SSL), image (untrained) and
the fusion image (SSL) + lesion + kinetic + radiomic; then the encoder fine-tuned end to end with all labels
(``--finetune-tasks``, ``--finetune-repeats`` draws), pretrained vs untrained. Prints a markdown table and writes
benchmarks/results/label_efficiency.json and label_efficiency.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results")
TASKS = ("subtype", "grade", "invasion")
SHOTS = (5, 10, 20, "all")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="labelled cases")
    parser.add_argument("--archive", type=int, default=200, help="unlabeled cases for pretraining")
    parser.add_argument("--steps", type=int, default=450, help="pretraining steps")
    parser.add_argument("--minutes", type=float, default=18.0, help="pretraining time limit")
    parser.add_argument("--encoder", default=None, help="a pretrained encoder.pt to use instead of pretraining")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--device", default="cpu", help="cpu or gpu (pretraining)")
    parser.add_argument("--work", default=None, help="keep the cases, run and cache here")
    parser.add_argument("--reuse", action="store_true", help="reuse the cases and run already in --work")
    parser.add_argument("--finetune-tasks", default="subtype", help="tasks for end-to-end fine-tuning ('' for none)")
    parser.add_argument("--finetune-repeats", type=int, default=3, help="draws of end-to-end fine-tuning (all labels)")
    parser.add_argument("--finetune-epochs", type=int, default=30)
    args = parser.parse_args(argv)

    from ssl_rcc.data.cases import read_case_table
    from ssl_rcc.features import compute_features
    from ssl_rcc.finetune import evaluate_draws, get_task
    from ssl_rcc.phantoms import generate_phantoms
    from ssl_rcc.pretrain import pretrain

    work = Path(args.work or tempfile.mkdtemp(prefix="label-efficiency-"))
    timings = {}
    cases, run = work / "cases" / "cases.csv", work / "run"
    start = time.perf_counter()
    if not (args.reuse and cases.is_file()):
        cases = generate_phantoms(work / "cases", n=args.n, seed=args.seed, balanced=True, overwrite=True)
    timings["phantoms_s"] = time.perf_counter() - start
    common = dict(method="simclr", accelerator=args.device, overwrite=True, progress=False)
    if args.encoder:
        encoder = Path(args.encoder)
        settings = json.loads(encoder.with_name("run.json").read_text())
        common.update(recipe=settings["recipe"], seed=settings["seed"])
        archive = Path(settings["data"])
    else:
        encoder = run / "encoder.pt"
        archive = work / "archive"
        if not (args.reuse and (archive / "cases.csv").is_file()):
            generate_phantoms(archive, n=args.archive, seed=args.seed + 1, unlabeled=True, masks=True, overwrite=True)
        if not (args.reuse and encoder.is_file()):
            start = time.perf_counter()
            pretrain(archive, out=run, max_steps=args.steps, max_time=args.minutes, cache=work / "archive_cache", **common)
            timings["pretrain_s"] = time.perf_counter() - start
    # the same recipe and seed untrained: the same architecture and initialisation
    scratch = work / "untrained" / "encoder.pt"
    if not (args.reuse and scratch.is_file()):
        pretrain(archive, out=scratch.parent, max_steps=0, cache=work / "archive_cache", **common)
    run = encoder.parent
    table = read_case_table(cases)
    start = time.perf_counter()
    tabular = compute_features(table, ["kinetic", "radiomic"], cache=work / "cache", progress=False)
    timings["kinetic_radiomic_features_s"] = time.perf_counter() - start
    ssl = compute_features(table, ["image", "lesion"], encoder=run / "encoder.pt", cache=work / "cache", progress=False)
    untrained = compute_features(table, ["image"], encoder=scratch, cache=work / "cache", progress=False)["image"]
    blocks = {"image": ssl["image"].to_numpy(), "lesion": ssl["lesion"].to_numpy(), "kinetic": tabular["kinetic"].to_numpy(),
              "radiomic": tabular["radiomic"].to_numpy()}
    sites = table["site"].to_numpy(dtype=str)
    results = {}
    start = time.perf_counter()
    for name in TASKS:
        task = get_task(name)
        labels = task.labels(table).to_numpy()
        for shots in SHOTS:
            try:
                fused = evaluate_draws(blocks, labels, sites, classes=task.classes, protocol="probe", shots=shots,
                                       repeats=args.repeats, seed=args.seed, n_boot=100)
                base = evaluate_draws({"image": untrained.to_numpy()}, labels, sites, classes=task.classes,
                                      protocol="probe", shots=shots, repeats=args.repeats, seed=args.seed, n_boot=100)
            except ValueError as err:  # too few cases of a class for this many shots
                print(f"{name} {shots}: skipped ({err})")
                continue
            row = {("image (SSL)" if k == "image" else ("fusion" if "+" in k else k)): v["auc"] for k, v in fused["sets"].items()}
            row["image (untrained)"] = base["sets"]["image"]["auc"]
            best = max(fused["differences"], key=lambda b: fused["sets"][b]["auc"]["mean"] or 0.0)
            row["fusion minus best block"] = dict(fused["differences"][best], block=best)
            results.setdefault(name, {})[str(shots)] = row
    timings["evaluation_s"] = time.perf_counter() - start
    start = time.perf_counter()
    finetuned = _finetune(args, table, sites, {"SSL": run / "encoder.pt", "untrained": scratch})
    timings["finetune_s"] = time.perf_counter() - start
    _write(results, timings, args, finetuned)


def _finetune(args, table, sites, encoders):
    """AUC of end-to-end fine-tuning with all labels (stratified halves), pretrained vs untrained."""
    from ssl_rcc.embed import load_encoder
    from ssl_rcc.features.image import tumour_crops
    from ssl_rcc.finetune import evaluate_draws, get_task

    out = {}
    tasks = [t for t in args.finetune_tasks.split(",") if t]
    for label, path in encoders.items():
        model, meta = load_encoder(path)
        crops = tumour_crops(table, model, meta) if tasks else None
        options = {"encoder_config": model.config(), "encoder_state": model.state_dict(), "epochs": args.finetune_epochs}
        for name in tasks:
            task = get_task(name)
            result = evaluate_draws({"image": crops}, task.labels(table).to_numpy(), sites, classes=task.classes,
                                    protocol="finetune", shots="all", repeats=args.finetune_repeats, seed=args.seed,
                                    n_boot=100, head_options=options)
            out.setdefault(name, {})[f"finetune ({label})"] = result["sets"]["image"]["auc"]
    return out


def _write(results, timings, args, finetuned):
    import matplotlib

    from kinetics.provenance import provenance

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    document = {"settings": vars(args), "timings": timings, "auc": results, "finetune_all_labels_auc": finetuned,
                "provenance": provenance("benchmarks.label_efficiency")}
    (RESULTS / "label_efficiency.json").write_text(json.dumps(document, indent=2))
    names = ["radiomic", "kinetic", "lesion", "image (SSL)", "image (untrained)", "fusion"]
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), constrained_layout=True, squeeze=False)
    for ax, (task, rows) in zip(axes[0], results.items()):
        x = np.arange(len(rows))
        for name in names:
            mean = [rows[s][name]["mean"] for s in rows]
            lo = [rows[s][name]["ci95"][0] for s in rows]
            hi = [rows[s][name]["ci95"][1] for s in rows]
            ax.errorbar(x, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)], marker="o", capsize=2, label=name)
        ax.set(xticks=x, xticklabels=list(rows), xlabel="labelled cases per class", ylabel="AUC", title=task, ylim=(0.3, 1.0))
        ax.axhline(0.5, ls=":", c="grey")
    axes[0][0].legend(fontsize=7)
    fig.savefig(RESULTS / "label_efficiency.png", dpi=100)
    print("| task | labels per class | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for task, rows in results.items():
        for s, row in rows.items():
            print(f"| {task} | {s} | " + " | ".join(f"{row[n]['mean']:.2f} [{row[n]['ci95'][0]:.2f}, {row[n]['ci95'][1]:.2f}]"
                                                       for n in names) + " |")
    for task, rows in finetuned.items():
        print(f"| {task} | all | end to end: " + ", ".join(f"{k} {v['mean']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
                                                          for k, v in rows.items()) + " |")
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})


if __name__ == "__main__":
    main()
