"""The one exception type for bad input: its message is one sentence for the user."""


class NtclassError(Exception):
    """Bad input or configuration; the message names the file, key or value and what was
    expected."""
