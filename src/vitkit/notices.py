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
