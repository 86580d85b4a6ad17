"""Bad-input sweep over both CLIs: every case must exit 2 with one 'error:' sentence, no traceback and
nothing at its output path. Not collected by pytest (about 2 minutes of subprocesses); run

    python tests/bad_input_sweep.py

It prints one line per case and the count tried and failed; exit status 1 if any failed.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

W = Path(tempfile.mkdtemp(prefix="bad-input-sweep-"))
PY = sys.executable


def run(prog, args):
    return subprocess.run([PY, "-m", prog] + [str(a) for a in args], capture_output=True, text=True, cwd=W)


assert run("kinetics", ["dro", "--out", W / "dro"]).returncode == 0
D = W / "dro"
meta = pd.read_json(D / "dro.json", typ="series")
from ssl_rcc.phantoms import generate_phantoms  # noqa: E402

cases = generate_phantoms(W / "cases", n=6, seed=5, balanced=True)
dce = nib.load(str(D / "dce.nii.gz"))
nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(W / "vol3d.nii.gz"))
nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), dce.affine), str(W / "small_mask.nii.gz"))
(W / "short_times.txt").write_text("0\n1\n2\n")
(W / "words.txt").write_text("a\nb\n")
(W / "empty.txt").write_text("")
pd.DataFrame({"time_s": [0, 1, 2], "x": [0, 1, 2]}).to_csv(W / "aif_bad.csv", index=False)
(W / "exists").mkdir()
ro = W / "afile"  # a path under a file: not writable even as root
ro.write_text("x")
t = np.arange(0, 300, 2.0)
pd.DataFrame({"t": t, "aorta": t, "LK": t}).to_csv(W / "curves_no_time.csv", index=False)
pd.DataFrame({"time_s": t, "aorta": np.exp(-((t - 30) / 10) ** 2), "LK": t / 300}).to_csv(W / "curves.csv", index=False)
pd.DataFrame({"scan": ["a"]}).to_csv(W / "study_nocurves.csv", index=False)
pd.DataFrame({"curves": ["curves.csv"], "t10": ["abc"]}).to_csv(W / "study_badt10.csv", index=False)
(W / "emptydir").mkdir()
(W / "not_encoder.pt").write_text("hello")
(W / "modeldir").mkdir()

base = ["fit", "--dce", D / "dce.nii.gz", "--times", D / "times.txt", "--aif", D / "aif.csv"]
sig = ["--input", "signal", "--t10", D / "t10_true.nii.gz", "--tr", meta["tr_s"], "--fa", meta["fa_deg"],
       "--baseline", meta["baseline_frames"]]
roi = ["fit-roi", "--curves", W / "curves.csv", "--aif-column", "aorta"]
K = [
    ["fit", "--dce", W / "missing.nii.gz", "--times", D / "times.txt", "--aif", D / "aif.csv", "--out", W / "o1"],
    ["fit", "--dce", W / "vol3d.nii.gz", "--times", D / "times.txt", "--aif", D / "aif.csv", "--out", W / "o2"],
    ["fit", "--dce", D / "dce.nii.gz", "--times", W / "short_times.txt", "--aif", D / "aif.csv", "--out", W / "o3"],
    ["fit", "--dce", D / "dce.nii.gz", "--times", W / "words.txt", "--aif", D / "aif.csv", "--out", W / "o4"],
    base[:-1] + ["nosuchaif", "--out", W / "o5"],
    base[:-1] + [W / "aif_bad.csv", "--out", W / "o6"],
    base + ["--model", "nomodel", "--out", W / "o7"],
    base + ["--method", "fast", "--out", W / "o8"],
    base + ["--input", "signal", "--tr", 0.004, "--fa", 15, "--baseline", 5, "--out", W / "o9"],
    base + sig[:4] + ["--tr", 4, "--fa", 15, "--baseline", 5, "--out", W / "o10"],
    base + sig[:4] + ["--tr", 0.004, "--fa", 0.26, "--baseline", 5, "--out", W / "o11"],
    base + sig + ["--r1", 4500, "--out", W / "o12"],
    base + sig + ["--hct", 1.5, "--out", W / "o13"],
    base + sig + ["--mask", W / "small_mask.nii.gz", "--out", W / "o14"],
    base + sig + ["--out", W / "exists"],
    base + sig + ["--out", ro / "o16"],
    base + sig + ["--max-iter", 0, "--out", W / "o17"],
    base + sig + ["--colour", "red", "--out", W / "o18"],
    ["t1map", "--vfa", D / "vfa.nii.gz", "--fa", "2,5", "--tr", meta["tr_s"], "--out", W / "o19.nii.gz"],
    ["t1map", "--vfa", D / "vfa.nii.gz", "--fa", ",".join(str(a) for a in meta["vfa_fa_deg"]), "--tr", 4, "--out", W / "o20.nii.gz"],
    ["aif", "parker", "--times", W / "empty.txt", "--out", W / "o21.csv"],
    ["aif", "parker", "--times", D / "times.txt", "--delay", 10000, "--out", W / "o22.csv"],
    ["aif", "nosuch", "--times", D / "times.txt", "--out", W / "o23.csv"],
    ["dro", "--out", W / "exists"],
    ["fit-roi", "--curves", W / "curves_no_time.csv", "--aif-column", "aorta", "--out", W / "o25.csv"],
    ["fit-roi", "--curves", W / "curves.csv", "--aif-column", "aortic", "--out", W / "o26.csv"],
    ["fit-roi", "--study", W / "study_nocurves.csv", "--aif-column", "aorta", "--out", W / "o27.csv"],
    ["fit-roi", "--study", W / "study_badt10.csv", "--aif-column", "aorta", "--out", W / "o28.csv"],
    roi + ["--model", "patlak_rutland", "--window-s", "a,b", "--out", W / "o29.csv"],
    roi + ["--model", "patlak_rutland", "--pr-form", "drawn", "--out", W / "o30.csv"],
    roi + ["--volume-ml", -5, "--out", W / "o31.csv"],
    roi + ["--out", ro / "o32.csv"],
]
S = [
    ["pretrain", "--data", W / "nothere", "--method", "simclr", "--out", W / "s1"],
    ["pretrain", "--data", W / "emptydir", "--method", "simclr", "--out", W / "s2"],
    ["pretrain", "--data", W / "cases", "--method", "swav", "--out", W / "s3"],
    ["pretrain", "--data", W / "cases", "--method", "simclr", "--patch", 7, "--out", W / "s4"],
    ["pretrain", "--data", W / "cases", "--method", "simclr", "--batch-size", 0, "--out", W / "s5"],
    ["pretrain", "--data", W / "cases", "--method", "simclr", "--out", ro / "s6"],
    ["embed", "--encoder", W / "missing.pt", "--data", cases, "--out", W / "s7.parquet"],
    ["embed", "--encoder", W / "not_encoder.pt", "--data", cases, "--out", W / "s8.parquet"],
    ["finetune", "--cases", W / "missing.csv", "--task", "subtype", "--out", W / "s9"],
    ["finetune", "--cases", cases, "--task", "stage", "--out", W / "s10"],
    ["finetune", "--cases", cases, "--task", "subtype", "--features", "genomic", "--out", W / "s11"],
    ["finetune", "--cases", cases, "--task", "subtype", "--features", "radiomic", "--shots", 1000, "--out", W / "s12"],
    ["finetune", "--cases", cases, "--task", "subtype", "--features", "radiomic", "--test-site", "mars", "--out", W / "s13"],
    ["predict", "--model", W / "modeldir", "--cases", cases, "--out", W / "s14.csv"],
    ["evaluate", "--predictions", W / "missing.csv", "--cases", cases, "--out", W / "s15"],
    ["phantoms", "--n", 0, "--out", W / "s16"],
    ["phantoms", "--n", 2, "--out", ro / "s17"],
    ["pack", "--data", W / "nothere", "--out", W / "s18"],
]

failures, tried = [], 0
for prog, cases_ in (("kinetics", K), ("ssl_rcc", S)):
    for args in cases_:
        tried += 1
        out = Path(str(args[args.index("--out") + 1]))
        existed = out.exists()
        r = run(prog, args)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        problems = []
        if r.returncode != 2:
            problems.append(f"exit {r.returncode}")
        if "Traceback" in r.stderr:
            problems.append("traceback")
        if len(lines) != 1:
            problems.append(f"{len(lines)} error lines")
        if out.exists() and not existed:
            problems.append("output left")
        msg = lines[0] if lines else r.stderr.strip().splitlines()[-1:]
        print(f"{'OK ' if not problems else 'BAD'} {prog} {args[0]}: {msg} {problems}")
        if problems:
            failures.append((prog, args, problems, r.stderr[-800:]))
print(f"\n{tried} bad inputs tried, {len(failures)} failed")
for f in failures:
    print(f[0], [str(a) for a in f[1]], f[2], f[3][-400:])
sys.exit(1 if failures else 0)
