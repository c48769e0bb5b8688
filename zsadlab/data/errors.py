"""The one exception the data package raises for bad input (a :class:`~zsadlab.errors.UserError`).

Every message names the offending file or folder *and* says how to fix it, so a
student sees one readable line instead of a deep traceback.
"""
from __future__ import annotations

from ..errors import UserError


class DatasetError(UserError):
    """A dataset on disk (or its raw download) is not what the code expects."""
