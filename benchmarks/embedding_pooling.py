"""Does the pooling of the encoder's feature maps lose the tumour? Pooling variants of one lesion crop.

    python -m benchmarks.embedding_pooling --work DIR [--ssl run_ssl_<tag>] [--untrained run_untrained]

Reads the cases and the two encoders that ``python -m benchmarks.ssl_value --work DIR`` left there (a
ResNet encoder pretrained and the same one untrained), embeds every labelled lesion's crop
(:func:`ssl_rcc.features.image.lesion_crop`, as ``embed`` and the heads see it) and pools the feature maps of
the four stages in several ways: the mean of the last stage (what ``embed`` does), the means of all
stages, mean and SD of the last stage, and means inside the tumour mask (resampled to each stage)
with and without a ring outside it. For each: effective rank, dead dimensions and the linear probe's
AUC (the heads' ``probe`` protocol and draws) at 10 and 20 labels per class for subtype, grade and
invasion. Writes ``benchmarks/results/embedding_pooling[_<tag>].json`` (with the runs' settings and
provenance).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results")


def stage_maps(encoder, x):
    """The feature maps after each of a MONAI ResNet encoder's four stages (forward hooks), and its embedding."""
    maps = []
    hooks = [getattr(encoder.net, f"layer{i}").register_forward_hook(lambda _m, _i, out: maps.append(out))
             for i in (1, 2, 3, 4)]
    try:
        embedding = encoder(x)
    finally:
        for hook in hooks:
            hook.remove()
    return maps, embedding


def pooled(maps, masks) -> dict:
    """(n, d) features of each pooling variant from the stage maps and the crops' tumour masks (n, *patch)."""
    import torch
    import torch.nn.functional as F

    means = [f.mean(dim=(2, 3, 4)) for f in maps]
    inside, ring = [], []
    for f in maps:
        share = F.adaptive_avg_pool3d(masks[:, None].float(), f.shape[2:])  # tumour fraction of each cell
        tumour = (share > 0.5).float()
        tumour = torch.where(tumour.sum(dim=(2, 3, 4), keepdim=True) > 0, tumour, share)  # a lesion under a cell
        outside = (F.max_pool3d(tumour, 3, 1, 1) - tumour).clamp(min=0)
        inside.append((f * tumour).sum(dim=(2, 3, 4)) / tumour.sum(dim=(2, 3, 4)).clamp(min=1e-6))
        ring.append((f * outside).sum(dim=(2, 3, 4)) / outside.sum(dim=(2, 3, 4)).clamp(min=1e-6))
    variants = {
        "mean of the last stage (embed)": means[3],
        "means of all stages": torch.cat(means, 1),
        "mean and SD of the last stage": torch.cat([means[3], maps[3].std(dim=(2, 3, 4))], 1),
        "inside the tumour, stage 3": inside[2],
        "inside the tumour and a ring, stage 3": torch.cat([inside[2], ring[2]], 1),
        "inside the tumour, all stages": torch.cat(inside, 1),
    }
    return {k: v.numpy() for k, v in variants.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="the --work folder of an ssl_value run")
    parser.add_argument("--ssl", default="run_ssl_lesion-t01", help="the pretrained run's folder in --work")
    parser.add_argument("--untrained", default="run_untrained", help="the untrained run's folder in --work")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--tag", default="", help="a name for the results file (embedding_pooling_<tag>.json)")
    args = parser.parse_args(argv)

    import torch

    from kinetics.provenance import provenance
    from ssl_rcc.data.cases import read_case_table
    from ssl_rcc.data.crops import box_crop
    from ssl_rcc.errors import InputError
    from ssl_rcc.features.cache import FeatureCache
    from ssl_rcc.features.image import preprocess_config
    from ssl_rcc.features.lesion import lesion_crop, preprocessed_lesion
    from ssl_rcc.finetune import evaluate_draws, get_task
    from ssl_rcc.health import representation_health
    from ssl_rcc.embed import load_encoder

    work = Path(args.work)
    table = read_case_table(work / "cases" / "cases.csv")
    cache = FeatureCache(work / "features")
    encoders = {name: load_encoder(work / run / "encoder.pt") for name, run in
                (("pretrained", args.ssl), ("untrained", args.untrained))}
    encoder, meta = encoders["pretrained"]
    for name, (model, model_meta) in encoders.items():
        if model.kind != "resnet":
            raise InputError(f"{name}: a {model.architecture} encoder; the stages pooled here are a ResNet's.")
        if (model.patch, model.in_channels, model_meta["spacing_mm"]) != (encoder.patch, encoder.in_channels, meta["spacing_mm"]):
            raise InputError(f"{name}: its patch, channels or spacing differ from the pretrained encoder's; "
                             "the two must see the same crops.")
    config = preprocess_config(meta)
    crops, masks = [], []
    for _, row in table.iterrows():
        data, mask = preprocessed_lesion(dict(row), config, encoder.in_channels, cache=cache)
        crop, (centre, side) = lesion_crop(data, mask, encoder.patch)
        crops.append(crop)
        masks.append(box_crop(mask[None], centre, side, encoder.patch, order=0)[0] > 0)
    crops, masks = torch.from_numpy(np.stack(crops)), torch.from_numpy(np.stack(masks))
    sites = table["site"].to_numpy(dtype=str)
    results = {}
    with torch.no_grad():
        for name, (model, _) in encoders.items():
            model.eval()
            parts = []
            for i in range(0, len(crops), 50):
                maps, embedding = stage_maps(model, crops[i:i + 50])
                parts.append(pooled(maps, masks[i:i + 50]))
                # the first variant is what embed computes: the same numbers
                torch.testing.assert_close(torch.from_numpy(parts[-1]["mean of the last stage (embed)"]), embedding)
            for variant in parts[0]:
                x = np.concatenate([p[variant] for p in parts])
                health = representation_health(x)
                line = {"dimensions": x.shape[1], "rankme": health["rankme"], "dead_fraction": health["dead_fraction"]}
                for task_name in ("subtype", "grade", "invasion"):
                    task = get_task(task_name)
                    labels = task.labels(table).to_numpy()
                    for shots in (10, 20):
                        r = evaluate_draws({"image": x}, labels, sites, classes=task.classes, protocol="probe",
                                           shots=shots, repeats=args.repeats, seed=args.seed, n_boot=20)
                        line[f"{task_name}_{shots}"] = r["sets"]["image"]["auc"]["mean"]
                results.setdefault(name, {})[variant] = line
                print(name, "|", variant, {k: round(v, 3) for k, v in line.items()}, flush=True)
    runs = {name: {k: v for k, v in json.loads((work / run / "run.json").read_text()).items()
                   if k in ("method", "architecture", "temperature", "steps_trained", "seed")}
            for name, run in (("pretrained", args.ssl), ("untrained", args.untrained))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"embedding_pooling{'_' + args.tag if args.tag else ''}.json").write_text(json.dumps(
        {"settings": vars(args), "runs": runs, "results": results, "provenance": provenance("benchmarks.embedding_pooling")}, indent=2))


if __name__ == "__main__":
    from kinetics.errors import KineticsInputError

    try:
        main()
    except KineticsInputError as err:  # bad input: one sentence
        raise SystemExit(f"error: {err}") from None
