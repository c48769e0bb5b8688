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


def read_checkpoint(path, what: str = "checkpoint"):
    """The object in a torch file (``weights_only=True``), or a :class:`CheckpointError` naming the file."""
    from .utils import load_torch_file

    try:
        return load_torch_file(path, what=what)
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from None


def load_submodule_checkpoint(module, path, key: str, what: str, hint: str):
    """Load ``checkpoint[key]`` of the official file at ``path`` into ``module`` (strict, weights_only).

    The shape shared by the official checkpoints (``{"prompt_learner": ...}``,
    ``{"trainable_linearlayer": ...}``): a file that is not such a dict, or whose tensors do
    not fit, raises one :class:`CheckpointError` line naming the file, torch's last line of
    detail and ``hint`` (what to check). Returns ``module``.
    """
    checkpoint = read_checkpoint(path, what=what)
    if not isinstance(checkpoint, dict) or key not in checkpoint:
        raise CheckpointError(f"{path} is not a {what}: expected a dict with key {key!r}.")
    try:
        module.load_state_dict(checkpoint[key])
    except RuntimeError as err:
        detail = err.args[0].strip().splitlines()[-1].strip()
        raise CheckpointError(f"the {key} weights in {path} do not fit this model ({detail}). {hint}") from None
    return module
