"""Reference classifier: a small CNN with BatchNorm.

BatchNorm is deliberate: deep-inversion explainers match its running statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfx_jax.models.layers import max_pool2


def conv_blocks(channels: int, features, rngs: nnx.Rngs) -> tuple[nnx.List, nnx.List, int]:
  """The 3x3 convolutions (no bias) and BatchNorms of conv-BN-ReLU blocks, one per width,
  and the channels that come out of the last."""
  convs, norms = nnx.List(), nnx.List()
  prev = channels
  for f in features:
    convs.append(nnx.Conv(prev, f, (3, 3), use_bias=False, rngs=rngs))
    norms.append(nnx.BatchNorm(f, momentum=0.9, rngs=rngs))
    prev = f
  return convs, norms, prev


class CNNClassifier(nnx.Module):
  """Three conv blocks (conv-BN-ReLU-pool), global average pooling, linear head."""

  def __init__(self, channels: int, num_classes: int, *,
               features: tuple[int, ...] = (32, 64, 128), rngs: nnx.Rngs):
    self.convs, self.norms, out = conv_blocks(channels, features, rngs)
    self.head = nnx.Linear(out, num_classes, rngs=rngs)

  def feature_maps(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Last conv block's activations (N, h, w, C) before global pooling, for Grad-CAM."""
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      x = jax.nn.relu(norm(conv(x), use_running_average=not train))
      if i < len(self.convs) - 1:
        x = max_pool2(x)
    return x

  def bn_features(self, x: jax.Array) -> tuple[jax.Array, tuple]:
    """Logits and, per BatchNorm layer, (its input (N, h, w, C), running mean, running var).

    One inference-mode forward pass; deep-inversion explainers match statistics of the
    BatchNorm inputs to the running ones learned in training, next to a loss on the
    logits, and a shared pass lets one backward pass serve both.
    """
    layers = []
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      pre = conv(x)
      layers.append((pre, norm.mean[...], norm.var[...]))
      x = jax.nn.relu(norm(pre, use_running_average=True))
      if i < len(self.convs) - 1:
        x = max_pool2(x)
    return self.feature_head(x), tuple(layers)

  def feature_head(self, maps: jax.Array) -> jax.Array:
    """Logits from `feature_maps`, so the network can be cut at the last conv block."""
    return self.head(jnp.mean(maps, axis=(1, 2)))

  def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Penultimate (pooled) features, used for realism metrics."""
    return jnp.mean(self.feature_maps(x, train=train), axis=(1, 2))

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return self.head(self.features(x, train=train))
