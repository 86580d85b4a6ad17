"""The shared command-line runner of ``kinetics`` and ``ssl_rcc``: fire, checked options, exit codes."""

from __future__ import annotations

import errno
import inspect
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

from .errors import KineticsInputError
from .provenance import invoked

__all__ = ["check_options", "run_cli"]


def check_options(commands: Mapping[str, Callable], argv: Sequence[str], prog: str) -> None:
    """Refuse unknown options and surplus positional values before a command runs.

    fire calls a command with the options it recognises and complains about the others only
    afterwards, when the work is done and written; this checks first.
    """
    if not argv or argv[0] not in commands or "--help" in argv or "-h" in argv:
        return
    params = inspect.signature(commands[argv[0]]).parameters
    valid = sorted("--" + p.replace("_", "-") for p in params)
    positional, expect_value = 0, False
    for token in argv[1:]:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            if name not in params:
                raise KineticsInputError(f"{prog} {argv[0]}: unknown option --{token[2:].split('=', 1)[0]}; valid options are {valid}.")
            expect_value = "=" not in token
        elif expect_value:
            expect_value = False
        else:
            positional += 1
    if positional > len(params):
        raise KineticsInputError(f"{prog} {argv[0]}: {positional} positional values for at most {len(params)} arguments.")


def run_cli(commands: Mapping[str, Callable], argv: Iterable[str], prog: str) -> int:
    """Run ``commands`` (fire) on ``argv``; bad input prints one sentence and returns 2.

    ``--debug`` anywhere shows the traceback instead. Other errors are bugs and propagate.
    """
    import fire

    argv = list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for name in ("kinetics", "ssl_rcc"):  # our progress messages; other libraries only warn
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        check_options(commands, argv, prog)
        with invoked(prog, argv):  # recorded in every output's provenance
            fire.Fire(commands, command=argv, name=prog)
    except KineticsInputError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if debug or err.errno not in FILE_SYSTEM_ERRORS:
            raise
        print(f"error: {err.filename or 'output'}: cannot write or read there ({err.strerror}).", file=sys.stderr)
        return 2
    return 0


# where the file system, not the program, refused: a read-only or full disk, a missing permission
FILE_SYSTEM_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
                      errno.ENAMETOOLONG}


