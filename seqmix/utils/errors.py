"""Telling a user's input error from a bug: the CLI prints seqmix's own one-line message for the first and keeps the
traceback for the second (``SEQMIX_DEBUG=1`` keeps it for both)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["INPUT_ERRORS", "seqmix_input_error"]

#: exception types seqmix raises on bad input (a value, a name, a missing file), with a message for the user
INPUT_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError)

_PKG = str(Path(__file__).resolve().parents[1])


def seqmix_input_error(error: BaseException) -> BaseException | None:
    """The innermost exception in ``error``'s chain (causes and contexts) that seqmix's own code raised on bad input
    (one of :data:`INPUT_ERRORS` whose raising frame is in the seqmix package), else None."""
    found, seen, e = None, set(), error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if isinstance(e, INPUT_ERRORS) and tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PKG):
            found = e
        e = e.__cause__ or e.__context__
    return found
