"""Model/guide consistency, checked once at trace time by ``ppl.density``.

When the values scored by ``ppl.density`` come from a guide run (a :func:`ppl.simulate`
result, or its ``.values``), the guide's sample sites are checked against the model's,
with NumPyro's semantics and ppl's messages:

* a guide site the model lacks is an error, unless marked ``infer={"is_auxiliary": True}``;
* a guide site the model observes is an error (its value would replace the data);
* a guide site the model marks for enumeration is not summed out: the guide's value is
  used, as NumPyro's ``replay`` does (``config_enumerate`` on both model and guide);
* the guide's value must have exactly the model's shape (no silent broadcasting), and a
  plate the two share by name must have the same size.

A model run that fails on the guide's values (a guide value of the wrong shape breaks a
later site's broadcasting) is checked up to the failure, so that the message names the
guide's site rather than the later one (:func:`name_the_mismatch`).
"""

from __future__ import annotations

from contextlib import contextmanager

import jax.numpy as jnp
from numpyro.handlers import trace

from .distributions import site_shape


class ModelGuideMismatch(ValueError):
    """Model and guide disagree about a site (its presence, shape, plates or role)."""


def _plates(site) -> str:
    frames = site.get("cond_indep_stack") or []
    if not frames:
        return "no plate"
    return ", ".join(f"plate '{f.name}' (size {f.size}, dim {f.dim})" for f in frames)


def _guide_samples(guide_trace, values):
    for name, site in guide_trace.items():
        if site.get("type") != "sample" or site.get("is_observed") or name not in values:
            continue
        if (site.get("infer") or {}).get("is_auxiliary"):
            continue
        yield name, site


def check_model_guide(model_trace, guide_trace, values, partial: bool = False) -> None:
    """Raise :class:`ModelGuideMismatch` naming the first inconsistent site.

    ``partial=True``: ``model_trace`` is the part of a model run before it failed; guide
    sites it has not reached are skipped."""
    for name, g in _guide_samples(guide_trace, values):
        m = model_trace.get(name)
        if partial and m is None:
            continue
        if m is None or m.get("type") != "sample":
            raise ModelGuideMismatch(
                f"site '{name}' is sampled by the guide but the model has no sample site "
                f"'{name}' (its -log q would be added to the objective for nothing); remove "
                "it from the guide, or mark it infer={'is_auxiliary': True} if it is an "
                "auxiliary variable of the guide"
            )
        if m.get("is_observed"):
            raise ModelGuideMismatch(
                f"site '{name}' is observed in the model but sampled by the guide; a guide "
                "must not sample observed sites (the sample would replace the data)"
            )
        model_shape = site_shape(m)
        guide_shape = tuple(jnp.shape(g["value"]))
        if guide_shape != model_shape:
            raise ModelGuideMismatch(
                f"Model and guide shapes disagree at site '{name}': guide {guide_shape} "
                f"({_plates(g)}), model {model_shape} ({_plates(m)})"
            )
        model_sizes = {f.name: f.size for f in m.get("cond_indep_stack") or []}
        for f in g.get("cond_indep_stack") or []:
            size = model_sizes.get(f.name)
            if size is not None and size != f.size:
                raise ModelGuideMismatch(
                    f"site '{name}': plate '{f.name}' has size {f.size} in the guide but "
                    f"{size} in the model"
                )


@contextmanager
def name_the_mismatch(model_tracer: trace, guide_trace, values):
    """Run a model under ``model_tracer`` (a NumPyro ``trace`` handler); if the run raises,
    check the sites it reached against the guide's first and raise the
    :class:`ModelGuideMismatch` naming the guide's site, if any, from the original error."""
    try:
        yield
    except ModelGuideMismatch:
        raise
    except Exception as err:
        reached = getattr(model_tracer, "trace", None)
        if guide_trace is None or not reached:
            raise
        try:
            check_model_guide(reached, guide_trace, values, partial=True)
        except ModelGuideMismatch as named:
            raise named from err
        raise
