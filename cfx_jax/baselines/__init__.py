"""Classic saliency baselines, batched and compiled, returning `Explanation` maps.

    out = explain_baseline("integrated_gradients", classifier, images)
    out.maps   # (N, H, W) float32 >= 0, for the predicted class (or `target`)

Every baseline explains the class log-odds logit_c - logsumexp_{k != c} logit_k, so
maps are comparable with the counterfactual explainers' difference maps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from cfx_jax import image_space
from cfx_jax.baselines.gradcam import gradcam
from cfx_jax.baselines.gradients import (
  gradient_x_input,
  integrated_gradients,
  integrated_gradients_attributions,
  smoothgrad,
  vanilla_gradient,
)
from cfx_jax.baselines.occlusion import occlusion
from cfx_jax.baselines.random_map import random_map
from cfx_jax.explanation import Explanation

BASELINES: dict[str, Callable[..., Explanation]] = {
    "gradient": vanilla_gradient,
    "gradient_x_input": gradient_x_input,
    "integrated_gradients": integrated_gradients,
    "smoothgrad": smoothgrad,
    "occlusion": occlusion,
    "gradcam": gradcam,
    "random": random_map,
}


def explain_baseline(name: str, classifier, images, target=None, *, key=None,
                     chunk_size: int | None = None, outputs: str = "logits",
                     value_range=None, variables=None, **options) -> Explanation:
  """Run baseline `name`; `key` is used by the stochastic ones and ignored otherwise.

  chunk_size None keeps the baseline's own default (smaller for those that evaluate
  many images per input, such as occlusion). `options` are the baseline's keywords,
  e.g. steps=64 for integrated_gradients. `classifier`, `outputs`, `value_range` and
  `variables` are as in `cfx_jax.fit_explainer`.
  """
  if name not in BASELINES:
    raise ValueError(f"unknown baseline {name!r}; available: {sorted(BASELINES)}")
  fn = BASELINES[name]
  accepted = [p for p in inspect.signature(fn).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY]
  allowed = {p.name for p in accepted} - {"key", "chunk_size"}
  unknown = sorted(set(options) - allowed)
  if unknown:
    raise TypeError(f"baseline {name!r} got unknown option(s) {unknown}; it accepts "
                    f"{sorted(allowed) or 'none'}")
  if "key" in {p.name for p in accepted}:
    options["key"] = key
  if chunk_size is not None:
    options["chunk_size"] = chunk_size
  space, clf, x = image_space.bind(classifier, images, outputs=outputs,
                                   value_range=value_range, variables=variables)
  return space.explanation(fn(clf, x, target, **options))


__all__ = ["BASELINES", "explain_baseline", "gradcam", "gradient_x_input",
           "integrated_gradients", "integrated_gradients_attributions", "occlusion",
           "random_map", "smoothgrad", "vanilla_gradient"]
