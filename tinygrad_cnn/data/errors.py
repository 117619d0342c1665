"""The one exception type the data package raises for bad data files."""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is missing, truncated, corrupt, or not laid out as expected.

    A subclass of ``ValueError`` so that callers that already catch bad-value errors keep
    working. The message always names the file (and the archive member, where there is one)
    and says what was expected and what was found.
    """
