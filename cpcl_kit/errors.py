"""One exception type for every user-facing mistake.

The CLI turns a ``KitError`` into a single line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""


class KitError(ValueError):
    """Bad input from the user: a path, an argument, a file's content. The message names it."""
