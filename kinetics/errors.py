"""The one exception type that bad input raises in ``kinetics``."""


class KineticsInputError(ValueError):
    """Bad input: the message is one sentence naming the argument or file, what was given and what fits.

    The CLI prints the message and exits with status 2; library callers may catch it as ``ValueError``.
    """
