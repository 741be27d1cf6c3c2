"""The objective library: each objective a short program in ppl's DSL."""

from .elbo import elbo

__all__ = ["elbo"]
