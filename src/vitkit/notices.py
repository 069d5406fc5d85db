"""The warning category of vitkit's own notices.

Files that are skipped (not images, corrupt, truncated), class folders without images and
similar adjustments are reported with ``warnings.warn(message, VitkitWarning)``: one line
that names the file or folder. The command line prints them as plain lines; library users
can filter them like any other warning.
"""

import sys
import warnings


class VitkitWarning(UserWarning):
    """Something in the input was skipped or adjusted; the message is one line naming it."""


def one_line(text: object) -> str:
    """A file or folder name fit for a one-line message: names holding line breaks or other
    unprintable characters are shown quoted with escapes."""
    s = str(text)
    return s if s.isprintable() else ascii(s)


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one line for a message: its first line, or its type when it has none."""
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else type(e).__name__


def plain_warnings() -> None:
    """Show VitkitWarning as one plain line, "vitkit: warning: MESSAGE", without Python's
    file, line number and source line; every other warning keeps the usual format."""
    original = warnings.showwarning
    if getattr(original, "vitkit_plain", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, VitkitWarning):
            print(f"vitkit: warning: {message}", file=file or sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    show.vitkit_plain = True
    warnings.showwarning = show


def check_ranges(section: str, checks: list[tuple[str, object, bool, str]]) -> None:
    """Refuse the first option out of its range with one line, "--SECTION.NAME VALUE: must be
    RULE", so bad settings stop before any data are read. Each check is (name, value, ok, rule)."""
    for name, value, ok, rule in checks:
        if not ok:
            raise ValueError(f"--{section}.{name} {value}: must be {rule}")


def is_number(value: object) -> bool:
    """A real number (bools are not), finite."""
    import math

    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
