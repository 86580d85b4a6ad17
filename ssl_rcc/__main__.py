"""Command line: ``python -m ssl_rcc demo`` (more commands arrive with pretraining and fine-tuning)."""

from __future__ import annotations

import logging
import sys

from kinetics.__main__ import check_options
from kinetics.errors import KineticsInputError


def demo(out="runs/demo", overwrite=False, seed=0):
    """Run the pipeline on built-in synthetic data and write a report with figures.

    Args:
        out: output directory (report.md, figures, intermediate files).
        overwrite: replace an existing output directory.
        seed: random seed of the synthetic data.
    """
    from .demo import run_demo

    return str(run_demo(out, overwrite=overwrite, seed=seed))


def phantoms(out, n=20, seed=0, unlabeled=False, balanced=False, preview=False, workers=None, size=96,
             overwrite=False):
    """Write synthetic renal cases (multi-phase CT, DCE-MRI, masks, labels) and DIR/cases.csv.

    Args:
        out: output directory.
        n: number of cases.
        seed: random seed; the same seed gives the same cases.
        unlabeled: CT volumes only (no labels, masks or DCE), for pretraining.
        balanced: equal subtype frequencies instead of the surgical-series priors.
        preview: also write preview.png, a montage of a few cases per subtype.
        workers: processes (default: all cores).
        size: CT grid edge in voxels (field of view 144 mm).
        overwrite: replace an existing output directory.
    """
    from .phantoms import generate_phantoms

    return str(generate_phantoms(out, n=n, seed=seed, unlabeled=unlabeled, balanced=balanced, preview=preview,
                                 workers=workers, size=size, overwrite=overwrite))


COMMANDS = {"demo": demo, "phantoms": phantoms}


def main(argv=None):
    """Run the CLI; bad input prints one sentence and exits 2 (``--debug`` shows the traceback)."""
    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for name in ("kinetics", "ssl_rcc"):  # our progress messages; other libraries only warn
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        check_options(COMMANDS, argv, "ssl_rcc")
        fire.Fire(COMMANDS, command=argv, name="ssl_rcc")
    except (KineticsInputError, ValueError) as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
