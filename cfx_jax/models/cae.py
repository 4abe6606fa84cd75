"""Networks of CAE, class association embedding (Xie et al., 2024, arXiv 2406.07961).

The encoder splits an image into a short class-associated code s (a vector) and an
individual code c (a feature map). The decoder rebuilds the image from c, with s acting
only through the scale and shift of every normalisation layer (AdaIN): s cannot carry
where things are, only how the decoder should render what c lays out, which is what lets
training push everything that decides the class into s. The discriminator has a
real/fake head and a class head on one shared trunk.

Skip path (`skip` > 0 channels): instance norm removes each image's own colour and
contrast at every decoder layer, so without it the decoder can render an image only in
the colours the class code sets, and a textured background comes back grey. With it the
encoder's first, full-resolution features (a 1x1 projection to `skip` channels) travel
to the decoder's last layer, unnormalised. They go inside the individual code c, folded
into its resolution (space to depth), so c stays one feature map: swapping s keeps them,
and the code term reads them back like the rest of c.

Stride-2 convolutions go through `layers.strided_conv` and upsampling is `layers.upsample2`
plus a 3x3 conv (no transposed convs), both for speed on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfx_jax.models.layers import strided_conv, upsample2

NORM_EPSILON = 1e-5


def instance_norm(h: jax.Array, eps: float = NORM_EPSILON) -> jax.Array:
  """Each channel of each image to zero mean and unit variance over its positions."""
  mean = jnp.mean(h, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(h - mean), axis=(1, 2), keepdims=True)
  return (h - mean) * jax.lax.rsqrt(var + eps)


def adain(h: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
  """(1 + scale) * instance_norm(h) + shift, with (N, C) scale and shift from s."""
  return (1.0 + scale[:, None, None, :]) * instance_norm(h) + shift[:, None, None, :]


def _conv(cin: int, cout: int, rngs: nnx.Rngs, *, stride: int = 1, kernel: int = 3, **kw):
  return nnx.Conv(cin, cout, (kernel, kernel), strides=stride,
                  conv_general_dilated=strided_conv, rngs=rngs, **kw)


def fold(h: jax.Array, factor: int) -> jax.Array:
  """(N, H, W, C) -> (N, H / f, W / f, f * f * C): each f x f block into the channels."""
  n, hh, ww, c = h.shape
  h = h.reshape(n, hh // factor, factor, ww // factor, factor, c)
  return h.transpose(0, 1, 3, 2, 4, 5).reshape(n, hh // factor, ww // factor, -1)


def unfold(h: jax.Array, factor: int) -> jax.Array:
  """The inverse of `fold`."""
  n, hh, ww, c = h.shape
  h = h.reshape(n, hh, ww, factor, factor, c // (factor * factor))
  return h.transpose(0, 1, 3, 2, 4, 5).reshape(n, hh * factor, ww * factor, -1)


class CaeEncoder(nnx.Module):
  """image (N, H, W, C) -> (s (N, style_dim), c (N, H / 2^(L-1), W / 2^(L-1), content)).

  A shared trunk (a 3x3 conv, then one stride-2 conv per further entry of `features`)
  feeds two heads. Content: a residual block with instance norm and a 3x3 conv to
  `content_channels`, followed with a skip path by its folded channels (`skip` x
  2^(2(L-1)) more). Class code: the trunk's global mean and max (a small local
  finding, such as a lesion, survives max pooling where a mean dilutes it), then a
  two-layer MLP to `style_dim`.
  """

  def __init__(self, channels: int, *, features: tuple[int, ...] = (16, 32, 64),
               style_dim: int = 8, content_channels: int = 32, mlp_width: int = 64,
               skip: int = 0, rngs: nnx.Rngs):
    if not features:
      raise ValueError("the encoder needs at least one feature width")
    self.scale = 2 ** (len(features) - 1)
    self.skip = _conv(features[0], skip, rngs, kernel=1) if skip else None
    self.trunk = nnx.List()
    prev = channels
    for i, f in enumerate(features):
      self.trunk.append(_conv(prev, f, rngs, stride=1 if i == 0 else 2))
      prev = f
    self.res_a = _conv(prev, prev, rngs)
    self.res_b = _conv(prev, prev, rngs)
    self.content = _conv(prev, content_channels, rngs)
    self.style_hidden = nnx.Linear(2 * prev, mlp_width, rngs=rngs)
    self.style_out = nnx.Linear(mlp_width, style_dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = x
    for i, conv in enumerate(self.trunk):
      h = jax.nn.leaky_relu(conv(h), 0.2)
      if i == 0:
        first = h
    pooled = jnp.concatenate([jnp.mean(h, axis=(1, 2)), jnp.max(h, axis=(1, 2))], axis=-1)
    s = self.style_out(jax.nn.leaky_relu(self.style_hidden(pooled), 0.2))
    r = jax.nn.relu(instance_norm(self.res_a(h)))
    h = h + instance_norm(self.res_b(r))
    c = self.content(h)
    if self.skip is not None:
      c = jnp.concatenate([c, fold(self.skip(first), self.scale)], axis=-1)
    return s.astype(jnp.float32), c.astype(jnp.float32)


class CaeDecoder(nnx.Module):
  """(s (N, style_dim), c (N, h, w, content)) -> image (N, H, W, channels) in (-1, 1).

  A 3x3 conv lifts c to `features[-1]` channels, a residual block works at that
  resolution, then each upsampling (nearest x2 + 3x3 conv) walks `features` back to the
  first width; every conv is followed by AdaIN driven by s, through an MLP whose last
  layers start at zero, so the untrained decoder uses plain instance norm. With a skip
  path, its channels (unfolded from c) join there through a 3x3 conv. A final 3x3 conv
  and tanh give the image.
  """

  def __init__(self, channels: int, *, features: tuple[int, ...] = (16, 32, 64),
               style_dim: int = 8, content_channels: int = 32, mlp_width: int = 64,
               skip: int = 0, rngs: nnx.Rngs):
    if not features:
      raise ValueError("the decoder needs at least one feature width")
    widths = list(reversed(features))
    self.scale = 2 ** (len(features) - 1)
    self.content_channels = content_channels
    self.merge = _conv(widths[-1] + skip, widths[-1], rngs) if skip else None
    self.lift = _conv(content_channels, widths[0], rngs)
    self.res_a = _conv(widths[0], widths[0], rngs)
    self.res_b = _conv(widths[0], widths[0], rngs)
    self.ups = nnx.List([_conv(a, b, rngs) for a, b in zip(widths, widths[1:])])
    self.out = _conv(widths[-1], channels, rngs)
    # One (scale, shift) pair per normalised conv: lift, the two residual convs, each up.
    self.norm_widths = tuple([widths[0]] * 3 + widths[1:])
    self.mlp_a = nnx.Linear(style_dim, mlp_width, rngs=rngs)
    self.mlp_b = nnx.Linear(mlp_width, mlp_width, rngs=rngs)
    zeros = nnx.initializers.zeros_init()
    self.affine = nnx.List([nnx.Linear(mlp_width, 2 * w, kernel_init=zeros, rngs=rngs)
                            for w in self.norm_widths])

  def modulation(self, s: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
    """(scale, shift) of each AdaIN layer, from the class code."""
    h = jax.nn.relu(self.mlp_b(jax.nn.relu(self.mlp_a(s))))
    return [tuple(jnp.split(layer(h), 2, axis=-1)) for layer in self.affine]

  def __call__(self, s: jax.Array, c: jax.Array) -> jax.Array:
    c, skip = c[..., :self.content_channels], c[..., self.content_channels:]
    mods = iter(self.modulation(s))
    h = jax.nn.relu(adain(self.lift(c), *next(mods)))
    r = jax.nn.relu(adain(self.res_a(h), *next(mods)))
    h = h + adain(self.res_b(r), *next(mods))
    for conv in self.ups:
      h = jax.nn.relu(adain(conv(upsample2(h)), *next(mods)))
    if self.merge is not None:
      h = jax.nn.relu(self.merge(jnp.concatenate([h, unfold(skip, self.scale)], axis=-1)))
    return jnp.tanh(self.out(h)).astype(jnp.float32)


class CaeAutoencoder(nnx.Module):
  """Encoder and decoder as one module: what training updates together and what is saved."""

  def __init__(self, channels: int, *, features: tuple[int, ...] = (16, 32, 64),
               style_dim: int = 8, content_channels: int = 32, mlp_width: int = 64,
               skip: int = 0, rngs: nnx.Rngs):
    kw = dict(features=tuple(features), style_dim=int(style_dim),
              content_channels=int(content_channels), mlp_width=int(mlp_width),
              skip=int(skip), rngs=rngs)
    self.encoder = CaeEncoder(channels, **kw)
    self.decoder = CaeDecoder(channels, **kw)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x)

  def decode(self, s: jax.Array, c: jax.Array) -> jax.Array:
    return self.decoder(s, c)

  def __call__(self, x: jax.Array) -> jax.Array:
    """The reconstruction dec(enc(x))."""
    return self.decode(*self.encode(x))


class CaeDiscriminator(nnx.Module):
  """image -> (real/fake logit (N,), class logits (N, K)) from one stride-2 conv trunk."""

  def __init__(self, channels: int, image_size: int | tuple[int, int], num_classes: int, *,
               features: tuple[int, ...] = (16, 32, 64), rngs: nnx.Rngs):
    if not features:
      raise ValueError("the discriminator needs at least one feature width")
    self.convs = nnx.List()
    prev = channels
    for f in features:
      self.convs.append(_conv(prev, f, rngs, stride=2))
      prev = f
    sides = ((int(image_size),) * 2 if isinstance(image_size, int)
             else tuple(int(d) for d in image_size))
    for _ in features:
      sides = tuple(-(-d // 2) for d in sides)
    dim = sides[0] * sides[1] * prev
    self.real = nnx.Linear(dim, 1, rngs=rngs)
    self.classes = nnx.Linear(dim, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = x
    for conv in self.convs:
      h = jax.nn.leaky_relu(conv(h), 0.2)
    h = h.reshape((h.shape[0], -1))
    return (self.real(h)[:, 0].astype(jnp.float32),
            self.classes(h).astype(jnp.float32))


def build_autoencoder(image_shape, model, rngs: nnx.Rngs) -> CaeAutoencoder:
  """The encoder and decoder of the `model` settings for images of `image_shape`."""
  h, w, c = (int(d) for d in image_shape)
  features = tuple(int(f) for f in model["features"])
  scale = 2 ** (len(features) - 1)
  if h % scale or w % scale:
    raise ValueError(f"image sides ({h}x{w}) must be divisible by {scale} for "
                     f"{len(features)} encoder stages (features={features})")
  return CaeAutoencoder(c, features=features, style_dim=int(model["style_dim"]),
                        content_channels=int(model["content_channels"]),
                        mlp_width=int(model["mlp_width"]), skip=int(model.get("skip", 0)),
                        rngs=rngs)


def build_networks(image_shape, num_classes: int, model, rngs: nnx.Rngs):
  """(CaeAutoencoder, CaeDiscriminator) of the `model` settings for `image_shape` images."""
  auto = build_autoencoder(image_shape, model, rngs)
  h, w, c = (int(d) for d in image_shape)
  disc = CaeDiscriminator(c, (h, w), num_classes,
                          features=tuple(int(f) for f in model["disc_features"]), rngs=rngs)
  return auto, disc
