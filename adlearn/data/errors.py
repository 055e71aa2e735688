"""The one exception type the data layer raises for bad input.

`DataError` subclasses `ValueError`, so code that already catches `ValueError` keeps working, while
notebooks can catch data problems specifically. Every message names the problem *and* the fix
(which file, which folder, what was expected).
"""

from __future__ import annotations


class DataError(ValueError):
    """A dataset, folder, file or argument the data layer cannot use as given."""
