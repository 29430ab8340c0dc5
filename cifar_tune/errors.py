"""The error every user-facing problem derives from, and how errors are shortened for tables.

`CifarTuneError.exit_code` is what `cifar-tune` returns for it: 2 for bad input (config, flag,
path, data files) found before any work started.
"""

from __future__ import annotations

ERROR_TEXT_LIMIT = 300  # characters of an error kept in tables, JSON summaries and messages


class CifarTuneError(Exception):
    """A problem the user must fix; the message names the key, value, file or path at fault."""

    exit_code = 2


class ConfigError(CifarTuneError):
    """A config problem the user must fix; the message names the key and value.

    Not a ValueError on purpose: raised inside a pydantic validator (the search check), it passes
    through unchanged with its exact key path instead of being re-wrapped as a ValidationError."""


def short_error(error: BaseException | str | None, limit: int = ERROR_TEXT_LIMIT) -> str:
    """One line for a table cell: an exception as 'Type: message', a traceback as its last line."""
    if error is None:
        return ""
    if isinstance(error, BaseException):
        cause = getattr(error, "cause", None) or error  # Ray wraps task errors; `cause` is the original
        text = f"{type(cause).__name__}: {cause}"
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[0] if lines else type(cause).__name__
    else:
        lines = [line for line in str(error).splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    return text.strip()[:limit]
