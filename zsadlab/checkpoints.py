"""Reading checkpoint files: any torch file safely, and the official one-submodule checkpoints.

Both raise one :class:`~zsadlab.errors.CheckpointError` line that names the file; torch files are
only ever read with ``weights_only=True`` (:func:`zsadlab.utils.load_torch_file`).
"""
from __future__ import annotations

from .errors import CheckpointError
from .utils import load_torch_file


def read_checkpoint(path, what: str = "checkpoint"):
    """The object in a torch file (``weights_only=True``), or a :class:`CheckpointError` naming the file."""
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
