"""What pretraining is worth: the same encoder pretrained and untrained, against radiomics, with few labels.

    python -m benchmarks.ssl_value [--n 300] [--archive 200] [--steps 450] [--minutes 18] [--repeats 10]
                                   [--work DIR] [--reuse] [--accelerator cpu|gpu]

On phantoms of a seed no test uses (cases: --seed, archive: --seed + 1): SimCLR with the recipe of the
device (``--recipe auto``) on the unlabeled archive for ``--steps`` steps (stopped after ``--minutes``
if slower), and the same encoder untrained (``--max-steps 0``, the same seed and so the same
initialisation). Then, for subtype, grade and invasion at 5, 10, 20 labels per class and all, the AUC
of a linear probe (the heads' ``probe`` protocol, the same draws for every feature set) for:

- ``embedding (SSL)`` / ``embedding (untrained)``: the encoder's output for the scaled tumour crop alone;
- ``image+lesion (SSL)`` / ``image+lesion (untrained)``: the image and lesion blocks late-fused, as the heads use them
  (``--features image,lesion``);
- ``lesion``: the lesion block alone (size, per-phase tumour and ring levels and spreads; no encoder);
- ``first-order radiomics`` (PyRadiomics first-order features per phase) and ``radiomic`` (all);
- ``fusion``: image (SSL) + lesion + kinetic + radiomic, late fusion as ``finetune`` does it.

Also: the paired AUC difference embedding SSL minus untrained (95% CI over draws and bootstrap), the
effective rank (RankMe) and dead dimensions of each embedding over the labelled cases, the training
throughput (samples/s, each sample two views) and the loss curve. Writes
``benchmarks/results/ssl_value.json`` and ``ssl_value.png`` and prints markdown tables.
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
    parser.add_argument("--n", type=int, default=300, help="labelled cases")
    parser.add_argument("--archive", type=int, default=200, help="unlabeled cases for pretraining")
    parser.add_argument("--steps", type=int, default=450, help="pretraining steps")
    parser.add_argument("--minutes", type=float, default=18.0, help="pretraining time limit")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--accelerator", default="auto", help="auto, cpu or gpu (pretraining)")
    parser.add_argument("--workers", type=int, default=1, help="loader processes")
    parser.add_argument("--work", default=None, help="keep the cases, runs and caches here")
    parser.add_argument("--reuse", action="store_true", help="reuse the cases and runs already in --work")
    parser.add_argument("--method", default="simclr", help="simclr, byol, dino or mae")
    parser.add_argument("--tag", default="", help="an ablation's name: its own run and results file")
    parser.add_argument("--intensity", type=float, default=None, help="ablation: views' intensity change (recipe: 0.02)")
    parser.add_argument("--gamma", default=None, help="ablation: views' gamma range lo,hi (recipe: none)")
    parser.add_argument("--temperature", type=float, default=None, help="ablation: NT-Xent temperature (recipe: 0.1 on CPU, 0.2 on GPU)")
    parser.add_argument("--no-lesion-masks", dest="lesion_masks", action="store_false",
                        help="ablation: an archive without masks (crops of enhancing tissue only, no lesion views)")
    args = parser.parse_args(argv)

    from ssl_rcc.data import PreprocessConfig, build_cache
    from ssl_rcc.data.cases import read_case_table
    from ssl_rcc.features import compute_features
    from ssl_rcc.phantoms import generate_phantoms
    from ssl_rcc.pretrain import pretrain

    work = Path(args.work or tempfile.mkdtemp(prefix="ssl-value-"))
    timings = {}
    cases, archive = work / "cases" / "cases.csv", work / ("archive_masks" if args.lesion_masks else "archive")
    start = time.perf_counter()
    if not (args.reuse and cases.is_file()):
        generate_phantoms(work / "cases", n=args.n, seed=args.seed, balanced=True, overwrite=True)
    if not (args.reuse and (archive / "cases.csv").is_file()):
        generate_phantoms(archive, n=args.archive, seed=args.seed + 1, unlabeled=True, masks=args.lesion_masks,
                          overwrite=True)
    timings["phantoms_s"] = time.perf_counter() - start
    runs = {"SSL": work / f"run_ssl{'_' + args.tag if args.tag else ''}",
            "untrained": work / ("run_untrained" if args.method != "mae" else "run_untrained_vit")}
    common = dict(method=args.method, cache=work / "cache", accelerator=args.accelerator, overwrite=True, progress=False,
                  workers=args.workers, probe_every=25)
    if not (args.reuse and (runs["SSL"] / "encoder.pt").is_file()):
        start = time.perf_counter()
        build_cache(archive, work / "cache", config=PreprocessConfig(), progress=False)
        timings["cache_s"] = time.perf_counter() - start
        gamma = None if args.gamma is None else [float(g) for g in args.gamma.split(",")]
        start = time.perf_counter()
        pretrain(archive, out=runs["SSL"], max_steps=args.steps, max_time=args.minutes, intensity=args.intensity,
                 gamma=gamma, temperature=args.temperature, **common)
        timings["pretrain_s"] = time.perf_counter() - start
    if not (args.reuse and (runs["untrained"] / "encoder.pt").is_file()):
        pretrain(archive, out=runs["untrained"], max_steps=0, **common)
    run = json.loads((runs["SSL"] / "run.json").read_text())
    table = read_case_table(cases)
    start = time.perf_counter()
    tabular = compute_features(table, ["kinetic", "radiomic"], cache=work / "features", progress=False)
    timings["kinetic_radiomic_features_s"] = time.perf_counter() - start
    start = time.perf_counter()
    image = {k: compute_features(table, ["image", "lesion"], encoder=r / "encoder.pt", cache=work / "features",
                                 progress=False) for k, r in runs.items()}
    timings["image_features_s"] = time.perf_counter() - start
    radiomic = tabular["radiomic"]
    # the encoder's output alone (e0, e1, ...), and the lesion block beside it (the same preprocessing)
    embedding = {k: v["image"].to_numpy() for k, v in image.items()}
    lesion = image["SSL"]["lesion"].to_numpy()
    sets = {
        "embedding (SSL)": embedding["SSL"], "embedding (untrained)": embedding["untrained"],
        # the image blocks as the heads use them: the embedding and the lesion block, fused late
        "image+lesion (SSL)": {"image": embedding["SSL"], "lesion": lesion},
        "image+lesion (untrained)": {"image": embedding["untrained"], "lesion": lesion},
        "lesion": lesion,
        "first-order radiomics": radiomic[[c for c in radiomic.columns if "firstorder" in c]].to_numpy(),
        "radiomic": radiomic.to_numpy(),
    }
    from ssl_rcc.health import representation_health

    health = {k: representation_health(v) for k, v in embedding.items()}
    start = time.perf_counter()
    auc, paired, fusion = _evaluate(table, sets, {"image": embedding["SSL"], "lesion": lesion,
                                                  "kinetic": tabular["kinetic"].to_numpy(), "radiomic": radiomic.to_numpy()},
                                    args)
    timings["evaluation_s"] = time.perf_counter() - start
    training = _training(runs["SSL"], run, timings)
    _write(args, run, timings, auc, paired, fusion, health, training)


def _evaluate(table, sets, fusion_blocks, args):
    """AUC per set, task and label count; paired SSL - untrained embedding differences; fusion vs its blocks."""
    from ssl_rcc.finetune import evaluate_draws, get_task
    from ssl_rcc.finetune.metrics import bootstrap_metrics, point_metrics, summarise

    sites = table["site"].to_numpy(dtype=str)
    auc, paired, fusion = {}, {}, {}
    for name in TASKS:
        task = get_task(name)
        labels = task.labels(table).to_numpy()
        for shots in SHOTS:
            try:
                results = {k: evaluate_draws(x if isinstance(x, dict) else {"image": x}, labels, sites, classes=task.classes,
                                             protocol="probe", shots=shots, repeats=args.repeats, seed=args.seed, n_boot=100)
                           for k, x in sets.items()}
                fused = evaluate_draws(fusion_blocks, labels, sites, classes=task.classes, protocol="probe", shots=shots,
                                       repeats=args.repeats, seed=args.seed, n_boot=100)
            except ValueError as err:  # too few cases of a class for this many shots
                print(f"{name} {shots}: skipped ({err})")
                continue
            auc.setdefault(name, {})[str(shots)] = {k: r["sets"][r["main"]]["auc"] for k, r in results.items()}
            auc[name][str(shots)]["fusion"] = fused["sets"][fused["main"]]["auc"]
            fusion.setdefault(name, {})[str(shots)] = fused["differences"]
            # paired by draw (same seed, same draws) and by bootstrap resample (same seed per draw)
            a, b = results["embedding (SSL)"]["records"]["image"], results["embedding (untrained)"]["records"]["image"]
            k = len(task.classes)
            points, boots = [], []
            for repeat, ((y, pa, ta), (_, pb, tb)) in enumerate(zip(a, b)):
                resamples = np.random.default_rng([args.seed, repeat, 1]).integers(0, len(y), size=(100, len(y)))
                points.append({"auc": point_metrics(y, pa, ta, k)["auc"] - point_metrics(y, pb, tb, k)["auc"]})
                boots.append({"auc": bootstrap_metrics(y, pa, ta, k, resamples)["auc"] - bootstrap_metrics(y, pb, tb, k, resamples)["auc"]})
            paired.setdefault(name, {})[str(shots)] = summarise(points, boots)["auc"]
            print(name, shots, {k: round(v["mean"], 3) for k, v in auc[name][str(shots)].items()}, flush=True)
    return auc, paired, fusion


def _training(run_dir, run, timings):
    """Throughput and the shape of the loss curve of the SSL run."""
    import pandas as pd

    metrics = pd.read_csv(run_dir / "metrics.csv")
    loss = metrics["train_loss"].to_numpy()
    steps = int(run.get("steps_trained", len(loss)))
    tenth = max(len(loss) // 10, 1)
    # a spike: a step more than 5 robust SDs (1.4826 x the median absolute deviation) above the running
    # median of 21 steps. A ratio to the median (once "50% above") counts batch noise as spikes once the
    # loss is small (at 0.3 a batch of 32 swings by +-0.2) and misses nothing a ratio would catch early.
    series = pd.Series(loss)
    median = series.rolling(21, center=True, min_periods=1).median()
    spread = 1.4826 * (series - median).abs().rolling(21, center=True, min_periods=1).median()
    robust_z = ((series - median) / spread.where(spread > 0)).to_numpy()
    samples = steps * run["batch_size"] * run["accumulate"]
    return {
        "steps": steps, "stopped_by": run.get("stopped_by"), "batch_size": run["batch_size"],
        "samples_per_s": samples / timings["pretrain_s"] if "pretrain_s" in timings else None,
        "views_per_s": 2 * samples / timings["pretrain_s"] if "pretrain_s" in timings else None,
        "loss_first_tenth": float(loss[:tenth].mean()), "loss_last_tenth": float(loss[-tenth:].mean()),
        "spikes": int(np.nansum(robust_z > 5.0)),
        "max_robust_z": float(np.nanmax(robust_z)) if np.isfinite(robust_z).any() else None,  # None: too short or flat
        "max_ratio_to_median": float(np.max(loss / median.to_numpy())),
        "loss": loss.tolist(), "health": metrics.dropna(subset=["rankme"])[["step", "rankme", "dead_fraction"]].to_dict("list"),
    }


def _write(args, run, timings, auc, paired, fusion, health, training):
    import matplotlib

    from kinetics.provenance import provenance

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    document = {"settings": vars(args), "run": {k: run[k] for k in ("recipe", "architecture", "patch", "batch_size", "lr",
                                                                     "temperature", "crop_scale", "intensity", "gamma",
                                                                     "max_steps")},
                "timings": timings, "training": training, "auc": auc, "ssl_minus_untrained": paired,
                "fusion_minus_block": fusion, "embedding_health": health, "provenance": provenance("benchmarks.ssl_value")}
    stem = f"ssl_value{'_' + args.tag if args.tag else ''}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=2))
    names = ["embedding (SSL)", "embedding (untrained)", "image+lesion (SSL)", "lesion", "first-order radiomics", "radiomic",
             "fusion"]
    fig, axes = plt.subplots(1, len(auc) + 1, figsize=(4.2 * (len(auc) + 1), 3.4), constrained_layout=True, squeeze=False)
    for ax, (task, rows) in zip(axes[0], auc.items()):
        x = np.arange(len(rows))
        for name in names:
            mean = [rows[s][name]["mean"] for s in rows]
            lo, hi = [rows[s][name]["ci95"][0] for s in rows], [rows[s][name]["ci95"][1] for s in rows]
            ax.errorbar(x, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)], marker="o", capsize=2, label=name)
        ax.set(xticks=x, xticklabels=list(rows), xlabel="labelled cases per class", ylabel="AUC", title=task, ylim=(0.3, 1.0))
        ax.axhline(0.5, ls=":", c="grey")
    axes[0][0].legend(fontsize=6)
    ax = axes[0][-1]
    ax.plot(np.arange(1, len(training["loss"]) + 1), training["loss"], lw=0.8)
    ax.set(xlabel="step", ylabel=f"{args.method} loss", title=f"pretraining ({run['recipe']} recipe)")
    fig.savefig(RESULTS / f"{stem}.png", dpi=100)
    print("| task | labels per class | " + " | ".join(names) + " | SSL - untrained (embedding) |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for task, rows in auc.items():
        for s, row in rows.items():
            d = paired[task][s]
            print(f"| {task} | {s} | " + " | ".join(f"{row[n]['mean']:.2f}" for n in names)
                  + f" | {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] |")
    print("embedding health:", {k: {m: round(v, 2) for m, v in h.items()} for k, h in health.items()})
    print("training:", {k: v for k, v in training.items() if k not in ("loss", "health")})
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})


if __name__ == "__main__":
    main()
