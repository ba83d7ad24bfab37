"""The one exception type for bad input: its message is one sentence for the user."""

import os
import re


class NtclassError(Exception):
    """Bad input or configuration; the message names the file, key or value and what was
    expected."""


def unexpanded(path: str) -> str:
    """Why a missing path may have been meant otherwise: a `~` or `$VARIABLE` left in it
    (config paths are expanded as a shell would; an unknown user or unset variable stays)."""
    path = str(path)
    unset = [name for name in re.findall(r"\$\{?(\w+)", path) if name not in os.environ]
    if unset:
        return f" (environment variable {unset[0]} is not set, so '${unset[0]}' stayed as written)"
    if path.startswith("~"):
        return f" ('{path.split(os.sep)[0]}' names no home folder here, so it stayed as written)"
    return ""
