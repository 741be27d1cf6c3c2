"""NumPyro glue: SVI loss adapter."""

from .svi import Objective, objective

__all__ = ["Objective", "objective"]
