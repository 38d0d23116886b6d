"""The one exception type for user errors.

A `DeployError` message says what is wrong (naming the file, field or value) and how to fix it.
The CLI prints it and exits 1 without a traceback; everything else is a bug and keeps its traceback.
"""


class DeployError(Exception):
    """A problem with the user's input, settings or environment; the message names the fix."""
