"""Cases per second of the synthetic case generator at the default size (96^3 CT, DCE 40x40x32x50).

    python -m benchmarks.phantoms_speed [--n 40] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from kinetics.options import available_cpus
from ssl_rcc.phantoms import generate_phantoms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for label, unlabeled in (("labelled (CT + DCE + masks)", False), ("unlabeled (CT only)", True)):
            start = time.perf_counter()
            generate_phantoms(os.path.join(tmp, label.split()[0]), n=args.n, seed=0, unlabeled=unlabeled, workers=args.workers)
            seconds = time.perf_counter() - start
            print(f"{label}: {args.n} cases in {seconds:.1f} s = {args.n / seconds:.2f} cases/s "
                  f"({args.workers or available_cpus()} processes)")


if __name__ == "__main__":
    main()
