"""NumPyro glue: SVI loss adapter, checkpoints and resumable runs."""

from .checkpoint import CheckpointError, load_checkpoint, resumable_run, save_checkpoint
from .svi import Objective, objective

__all__ = [
    "Objective",
    "objective",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "resumable_run",
]
