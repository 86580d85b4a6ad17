"""Command line: ``python -m ssl_rcc demo`` (more commands arrive with pretraining and fine-tuning)."""

from __future__ import annotations

import logging
import sys

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


COMMANDS = {"demo": demo}


def main(argv=None):
    """Run the CLI; bad input prints one sentence and exits 2 (``--debug`` shows the traceback)."""
    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        fire.Fire(COMMANDS, command=argv, name="ssl_rcc")
    except (KineticsInputError, ValueError) as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
