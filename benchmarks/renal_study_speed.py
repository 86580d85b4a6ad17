"""A renography study in one call against one ``fit-roi`` process per scan, in the same run.

    python -m benchmarks.renal_study_speed [--scans 100] [--sample 10] [--model 2cfm]

Writes ``--scans`` signal-input scans of two kidneys (2CFM curves, their own T1 per kidney), then times
``python -m kinetics fit-roi --study`` on all of them (start-up included) and one ``fit-roi`` process per
scan on ``--sample`` of them (scaled to all scans), and checks that both give the same GFRs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).with_name("results")


def write_study(folder, n_scans, seed=0):
    from kinetics.aif import plasma_aif
    from kinetics.models import two_compartment_filtration
    from kinetics.signal import signal_from_concentration

    rng = np.random.default_rng(seed)
    t = np.arange(0, 300, 2.0)
    cp = plasma_aif("parker", t, delay_s=10.0)
    acquisition = dict(tr_s=0.004, fa_deg=15.0, r1_per_mM_s=4.5, s0=1000.0)
    aorta = signal_from_concentration(cp * (1 - 0.42), t10_s=1.6, **acquisition)
    rows = []
    for i in range(n_scans):
        columns = {"time_s": t, "aorta": aorta}
        t10 = rng.uniform(1.1, 1.6, 2)
        for roi, t1 in zip(("LK", "RK"), t10):
            conc = two_compartment_filtration(t, cp, rng.uniform(150, 250), 0.25, rng.uniform(10, 40), 120.0)
            columns[roi] = signal_from_concentration(conc, t10_s=t1, **acquisition) + rng.normal(0, 2.0, t.size)
        pd.DataFrame(columns).to_csv(folder / f"scan{i:03d}.csv", index=False)
        rows.append({"scan_id": f"S{i:03d}", "curves": f"scan{i:03d}.csv", "t10_LK": t10[0], "t10_RK": t10[1],
                     "volume_ml_LK": 150, "volume_ml_RK": 130})
    pd.DataFrame(rows).to_csv(folder / "study.csv", index=False)
    return folder / "study.csv"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=100)
    parser.add_argument("--sample", type=int, default=10, help="scans timed one process each")
    parser.add_argument("--model", default="2cfm")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="renal-study-") as tmp:
        work = Path(tmp)
        study = write_study(work, args.scans)
        common = ["--aif-column", "aorta", "--model", args.model, "--input", "signal", "--tr", "0.004", "--fa", "15",
                  "--baseline", "5"]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kinetics", "fit-roi", "--study", str(study), "--out", str(work / "all.csv")]
                       + common, check=True, capture_output=True)
        one_call_s = time.perf_counter() - start
        table = pd.read_csv(study)
        start = time.perf_counter()
        for _, row in table.head(args.sample).iterrows():
            subprocess.run([sys.executable, "-m", "kinetics", "fit-roi", "--curves", str(work / row["curves"]),
                            "--t10", f"{{LK: {row['t10_LK']}, RK: {row['t10_RK']}}}", "--volume-ml", "{LK: 150, RK: 130}",
                            "--out", str(work / f"{row['scan_id']}.csv")] + common, check=True, capture_output=True)
        per_process_s = (time.perf_counter() - start) / args.sample
        together = pd.read_csv(work / "all.csv")
        alone = pd.concat([pd.read_csv(work / f"{s}.csv") for s in table["scan_id"].head(args.sample)], ignore_index=True)
        difference = float(np.max(np.abs(together["gfr_ml_min"].to_numpy()[: len(alone)] - alone["gfr_ml_min"].to_numpy())))
        result = {"scans": args.scans, "rois": 2 * args.scans, "model": args.model, "one_call_s": one_call_s,
                  "per_scan_process_s": per_process_s, "processes_for_all_s": per_process_s * args.scans,
                  "speed_up": per_process_s * args.scans / one_call_s, "max_gfr_difference_ml_min": difference,
                  "status": together["fit_status"].value_counts().to_dict() if "fit_status" in together else None}
    from kinetics.provenance import provenance

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "renal_study_speed.json").write_text(json.dumps(result | {"settings": vars(args),
                                                                         "provenance": provenance("kinetics")}, indent=2))
    print(f"{args.scans} scans x 2 kidneys ({args.model}, signal input): one --study call {one_call_s:.1f} s "
          f"(start-up included); one process per scan {per_process_s:.2f} s each, {per_process_s * args.scans:.0f} s "
          f"for all ({result['speed_up']:.0f}x); largest GFR difference between the two {difference:.2g} mL/min")
    return result


if __name__ == "__main__":
    main()
