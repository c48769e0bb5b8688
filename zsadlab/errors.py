"""The one exception family for bad input from the user.

Everything the user hands to zsadlab - a dataset folder, a checkpoint, an image, a run
folder, a command-line value - is checked where it is read, and a problem raises a
:class:`UserError` whose message names the file (or value) and says how to fix it. The
CLI prints these as one line; every other exception is a bug and keeps its traceback.

``UserError`` derives from ``ValueError`` so that code written against the older
``ValueError`` contract keeps working.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: the message names what is wrong and the fix."""


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


class InputError(UserError):
    """An argument, image file or folder given by the user cannot be used."""


class RunError(UserError):
    """A training run folder belongs to another run (method, config, dataset, seed)."""
