"""Errors for user mistakes: the CLI prints their message (no traceback) and exits with 2."""

import difflib


class UserError(Exception):
    """Base of errors caused by input the user can fix."""


class ConfigError(UserError, ValueError):
    """A config key has a value that cannot work; the message names key, value and what is expected."""


class DataError(UserError, ValueError):
    """A data set cannot be used as it is; the message names the file or folder."""


class ExportError(UserError):
    """An exported network does not reproduce the PyTorch model (the export is not kept)."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the message names step, epoch and loss terms."""


def suggest(word, options) -> str:
    """`` Did you mean 'x'?`` for the options close to ``word`` (empty when none is)."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
