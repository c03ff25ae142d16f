"""The one base class of the errors a user can fix (config, input files, arguments).

Every ``mlet-*`` command prints such an error as one line (``mlet-<command>: error: ...``) and exits
with status 2; any other exception is a bug and keeps its traceback (exit status 1).
"""

from __future__ import annotations


class MletError(Exception):
    """A problem with the user's config, files or arguments; the message names what to fix."""


class InputError(MletError, ValueError):
    """An input file that cannot be used as the config says: empty, or without a column it needs.
    The message names the file and what is missing."""
