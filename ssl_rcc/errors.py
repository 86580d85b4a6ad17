"""The exception type for bad input in ``ssl_rcc`` (a ValueError, like kinetics')."""

from kinetics.errors import KineticsInputError


class InputError(KineticsInputError):
    """Bad input: one sentence naming the file or argument, what was given and what was expected.

    A subclass of :class:`kinetics.errors.KineticsInputError`, so both CLIs print it and exit 2.
    """
