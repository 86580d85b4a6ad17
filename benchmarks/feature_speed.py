"""Time to compute the kinetic and radiomic feature blocks of N labelled synthetic cases, and to read
them back from the cache (the second run of any other protocol or task).

    python -m benchmarks.feature_speed [--n 400] [--workers N] [--work DIR]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from kinetics.options import available_cpus


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--work", default=None, help="keep the cases here (reused when present)")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)

    from ssl_rcc.data.cases import read_case_table
    from ssl_rcc.features import compute_features
    from ssl_rcc.phantoms import generate_phantoms

    work = Path(args.work or tempfile.mkdtemp(prefix="feature-speed-"))
    cases = work / "cases" / "cases.csv"
    if not cases.is_file():
        cases = generate_phantoms(work / "cases", n=args.n, seed=77, balanced=True)
    table = read_case_table(cases)
    workers = args.workers or available_cpus()
    with tempfile.TemporaryDirectory() as cache:
        for block in ("kinetic", "radiomic"):
            start = time.perf_counter()
            compute_features(table, [block], cache=cache, workers=workers, progress=False)
            seconds = time.perf_counter() - start
            print(f"{block}: {len(table)} cases in {seconds:.1f} s = {len(table) / seconds:.2f} cases/s ({workers} processes)")
        start = time.perf_counter()
        compute_features(table, ["kinetic", "radiomic"], cache=cache, workers=workers, progress=False)
        print(f"both blocks again, from the cache: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
