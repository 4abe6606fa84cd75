"""Contrastive counterfactuals in a generative latent space, with causal scores.

After Alipour et al., "Explaining image classifiers using contrastive counterfactuals in
generative latent spaces" (arXiv 2206.05257). Three learned pieces:

  G             a generator with a latent space. As in the paper, it may be pretrained
                and frozen, on other images of the same shape: `fit(..., generator=G)`
                with G a `PretrainedGenerator` (or any object with its fields: traceable
                encode(images) -> z and decode(z) -> images, images in [-1, 1], z of any
                `latent_shape`, optionally sample_prior(key, n) -> z; without a prior,
                encoded training images stand in for prior draws). G is never trained
                then. Without one, a small conv VAE (`cfx_jax.models.vae`) is trained on
                the explained images: it trains stably on CPU, and its encoder gives the
                latent code of a real image without a per-image GAN inversion
                (`explainer.generator.as_pretrained()` reuses it for another classifier).
  predictors    one sigmoid output per binary attribute (a small CNN trained on real,
                labelled images), plus the classifier itself as one more attribute, the
                last one, named "outcome" (its probability of class 1).
  shift         an MLP (z, t) -> dz, t in {-1, 0, +1}^(K+1) the requested changes, trained
                so that the predictors on G(z + dz) show them; for a latent grid (h, w, c),
                as the VAE's with `spatial_latent=True`, 3x3 convs over the grid instead.

Shift training (one jitted step): latents z come from the prior and from encoded
training images; each example requests one change (an attribute or the outcome, chosen
uniformly; the requested value is the opposite of the current decision with probability
`flip_fraction`, else a no-op request the shift must learn to keep small). With l_j the
logits of the predictors on G(z + dz), l0_j on G(z) and s = +-1 the requested direction:

  softplus(margin - s * l_requested)            BCE towards the requested value; the
                                                margin makes the edit clear, not borderline
  + keep * sum_j huber(clip(l_j) - clip(l0_j))  j: the other attributes (not the outcome)
  + shift_norm * |dz|_2                         (`shift_local`: summed over grid positions)

The keep term compares (clipped) logits rather than decisions: a lesion that fades under
a brightness edit but is still just detected keeps its decision, yet it has changed, and
a classifier may stop seeing it. The keep term never holds the outcome: under an
intervention on an attribute the classifier's decision is the measured effect, so it
must be free to follow. When the outcome itself is requested (a contrastive
counterfactual), the attributes are held with the weight `outcome_keep` (default 0): the
counterfactual may change exactly what the classifier relies on, and the norm term keeps
the change small.

Causal scores (PN, PS, PNS of each attribute for the decision): `cfx_jax.methods.latent.causal`.
"""

from cfx_jax.methods.latent.explainer import LatentExplainer
from cfx_jax.methods.latent.generator import PretrainedGenerator

__all__ = ["LatentExplainer", "PretrainedGenerator"]
