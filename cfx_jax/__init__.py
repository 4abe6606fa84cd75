"""cfx_jax: counterfactual explanations of image classifiers, in JAX.

    explainer = cfx_jax.fit_explainer(classifier, images, method="syce")
    out = explainer.explain(images)      # -> cfx_jax.Explanation
    cfx_jax.explain_baseline("integrated_gradients", classifier, images)

The names below are imported on first use, so that importing a light part of the
package (the command line, to print its help) does not import JAX.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from cfx_jax.api import fit_explainer, load_explainer, trainable_methods
  from cfx_jax.baselines import BASELINES, explain_baseline
  from cfx_jax.classifier import Classifier, as_classifier
  from cfx_jax.explanation import Explanation
  from cfx_jax.methods import Explainer
  from cfx_jax.methods.conditional.config import explainer_config
  from cfx_jax.methods.registry import paper_form

_SOURCES = {
    "fit_explainer": "cfx_jax.api", "load_explainer": "cfx_jax.api",
    "trainable_methods": "cfx_jax.api", "BASELINES": "cfx_jax.baselines",
    "explain_baseline": "cfx_jax.baselines", "Classifier": "cfx_jax.classifier",
    "as_classifier": "cfx_jax.classifier", "Explanation": "cfx_jax.explanation",
    "Explainer": "cfx_jax.methods",
    "explainer_config": "cfx_jax.methods.conditional.config",
    "paper_form": "cfx_jax.methods.registry",
}
# Public names whose object now goes by another name where it lives.
_RENAMED = {"REGISTRY": ("cfx_jax.methods", "METHODS")}


def __getattr__(name: str):
  if name == "METHODS":  # every method fit_explainer accepts
    value = tuple(sorted(importlib.import_module("cfx_jax.methods").METHODS))
  elif name in _RENAMED:
    module, attribute = _RENAMED[name]
    value = getattr(importlib.import_module(module), attribute)
  elif name in _SOURCES:
    value = getattr(importlib.import_module(_SOURCES[name]), name)
  elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
    return importlib.import_module(f"{__name__}.{name}")  # a subpackage, as before
  else:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__():
  return sorted({*globals(), *_SOURCES, *_RENAMED, "METHODS"})


__all__ = ["BASELINES", "METHODS", "Classifier", "Explainer", "Explanation",
           "as_classifier", "explain_baseline", "explainer_config", "fit_explainer",
           "load_explainer", "paper_form", "trainable_methods"]
__version__ = "0.1.0"
