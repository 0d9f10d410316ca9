"""The one exception type of the project.

Library code raises :class:`VosError` with a single, complete sentence; only the CLI catches it,
prints it and exits with status 1.
"""


class VosError(Exception):
    """A user-facing error: bad input, missing file, unusable model, unwritable output."""
