"""Which exceptions are the user's mistake (one line, exit 2) and which are bugs (traceback).

Why here, low in the layering: the command line, the app's server and its job runner all
reduce errors the same way, and none of them should import another's code for it.
"""

from __future__ import annotations

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, OSError, NotImplementedError)


def user_error(err: BaseException | None) -> BaseException | None:
    """The user-facing error inside ``err`` (Hydra wraps constructor errors in its own), or None."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, USER_ERRORS):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def one_line(err: BaseException) -> str:
    """The message to print for a user error (a KeyError's repr quotes its text; use the text)."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
