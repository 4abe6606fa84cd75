"""cfx_jax: counterfactual explanations of image classifiers, in JAX.

    explainer = cfx_jax.fit_explainer(classifier, images, method="syce")
    out = explainer.explain(images)      # -> cfx_jax.Explanation
    cfx_jax.explain_baseline("integrated_gradients", classifier, images)
"""

from cfx_jax.api import fit_explainer, load_explainer, trainable_methods
from cfx_jax.baselines import BASELINES, explain_baseline
from cfx_jax.classifier import Classifier, as_classifier
from cfx_jax.config import explainer_config, paper_form
from cfx_jax.explanation import Explanation
from cfx_jax.methods import REGISTRY, Explainer

METHODS = tuple(sorted(REGISTRY))  # every method fit_explainer accepts

__all__ = ["BASELINES", "METHODS", "Classifier", "Explainer", "Explanation",
           "as_classifier", "explain_baseline", "explainer_config", "fit_explainer",
           "load_explainer", "paper_form", "trainable_methods"]
__version__ = "0.1.0"
