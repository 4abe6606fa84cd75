"""PyTorch twin of the binary SyCE/CyCE networks and train step, to time against JAX.

    python -m benchmarks.torch_reference [--image-size 32] [--per-class 32] [--steps 20]

Same layers, initialisation, losses, optimiser and update order as cfx_jax with two
classes (the paper's form: one U-Net generator and one discriminator per class) and a
frozen BatchNorm CNN classifier. `load_nnx` copies an NNX state into these modules, so
outputs and losses can be checked against the JAX ones (tests/test_torch_reference.py).

Tensors are NCHW; grouped images are (2, B, C, H, W), the JAX step's (2, B, H, W, C)
transposed once by `to_nchw`. Two details make the numbers match Flax:
  * 'SAME' padding follows lax: total padding (ceil(n/s)-1)*s + k - n, the smaller half
    first, so a stride-2 3x3 conv on an even size pads 0 before and 1 after;
  * the discriminator flattens its features in H, W, C order, as the NHWC reshape does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SYCE_WEIGHTS = dict(flip=0.2, adv=0.25, cycle=2.0, cycle_cls=0.005, sym=10.0,
                    sym_cls=0.01, l1=1.0, gp=1.0)
CYCE_WEIGHTS = {**SYCE_WEIGHTS, "cycle": 10.0, "sym": 0.0, "sym_cls": 0.0}


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """lax 'SAME' padding of one spatial axis (low, high)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _lecun_normal_(w: torch.Tensor, fan_in: int) -> None:
  """Flax's default kernel init: truncated normal (+-2 sd) with variance 1 / fan_in."""
  std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
  nn.init.trunc_normal_(w, 0.0, std, -2.0 * std, 2.0 * std)


class Conv(nn.Conv2d):
  """3x3 conv with Flax 'SAME' padding and Flax initialisation."""

  def __init__(self, cin: int, cout: int, *, stride: int = 1, bias: bool = True,
               zero: bool = False):
    super().__init__(cin, cout, 3, stride=stride, padding=0, bias=bias)
    with torch.no_grad():
      if zero:
        self.weight.zero_()
      else:
        _lecun_normal_(self.weight, cin * 9)
      if bias:
        self.bias.zero_()

  def forward(self, x):
    s = self.stride[0]
    (ht, hb), (wl, wr) = _same_pads(x.shape[-2], 3, s), _same_pads(x.shape[-1], 3, s)
    if ht == hb and wl == wr:   # symmetric: let the conv pad, no extra copy
      return F.conv2d(x, self.weight, self.bias, s, (ht, wl))
    return F.conv2d(F.pad(x, (wl, wr, ht, hb)), self.weight, self.bias, s)


class Linear(nn.Linear):
  def __init__(self, cin: int, cout: int):
    super().__init__(cin, cout)
    with torch.no_grad():
      _lecun_normal_(self.weight, cin)
      self.bias.zero_()


def _lrelu(x):
  return F.leaky_relu(x, 0.2)


class ConvBlock(nn.Module):
  """Two 3x3 convs with leaky ReLU; the first may downsample."""

  def __init__(self, cin: int, cout: int, *, stride: int = 1):
    super().__init__()
    self.a = Conv(cin, cout, stride=stride)
    self.b = Conv(cout, cout)

  def forward(self, x):
    return _lrelu(self.b(_lrelu(self.a(x))))


class UNet(nn.Module):
  """The residual U-Net of cfx_jax.models.unet without conditioning, one head."""

  def __init__(self, channels: int, features=(16, 32, 64)):
    super().__init__()
    self.down = nn.ModuleList()
    prev = channels
    for i, f in enumerate(features):
      self.down.append(ConvBlock(prev, f, stride=1 if i == 0 else 2))
      prev = f
    self.up_convs = nn.ModuleList()
    self.up_blocks = nn.ModuleList()
    for f in reversed(features[:-1]):
      self.up_convs.append(Conv(prev, f))
      self.up_blocks.append(ConvBlock(2 * f, f))
      prev = f
    # Zero head: the generator starts as the identity map.
    self.heads = nn.ModuleList([Conv(prev, channels, zero=True)])

  def forward(self, x):
    h, skips = x, []
    for block in self.down:
      h = block(h)
      skips.append(h)
    for conv, block, skip in zip(self.up_convs, self.up_blocks, reversed(skips[:-1])):
      h = _lrelu(conv(F.interpolate(h, scale_factor=2, mode="nearest")))
      h = block(torch.cat([h, skip], dim=1))
    r = self.heads[0](h).float()
    return torch.clamp(x + 2.0 * torch.tanh(r), -1.0, 1.0)


class Trunk(nn.Module):
  """Three stride-2 convs and a linear logit (one class's discriminator)."""

  def __init__(self, channels: int, image_size: int, features=(32, 64, 96)):
    super().__init__()
    self.convs = nn.ModuleList()
    prev, side = channels, image_size
    for f in features:
      self.convs.append(Conv(prev, f, stride=2))
      prev, side = f, -(-side // 2)
    self.out = Linear(side * side * prev, 1)

  def forward(self, x):
    for conv in self.convs:
      x = _lrelu(conv(x))
    h = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)   # H, W, C order, as in JAX
    return self.out(h)[:, 0].float()


class PerClass(nn.Module):
  """One network per class, named `nets` like the NNX Generator/Discriminator."""

  def __init__(self, nets):
    super().__init__()
    self.nets = nn.ModuleList(nets)

  def forward(self, x, c: int):
    return self.nets[c](x)


class CNNClassifier(nn.Module):
  """Conv (no bias) - BatchNorm - ReLU - max-pool blocks, global mean pool, linear head."""

  def __init__(self, channels: int, num_classes: int = 2, features=(32, 64, 128)):
    super().__init__()
    self.convs = nn.ModuleList()
    self.norms = nn.ModuleList()
    prev = channels
    for f in features:
      self.convs.append(Conv(prev, f, bias=False))
      # Flax momentum 0.9 keeps 0.9 of the running value: torch's momentum is 0.1. Only
      # eval mode is used here (in train mode torch's running variance is unbiased).
      self.norms.append(nn.BatchNorm2d(f, eps=1e-5, momentum=0.1))
      prev = f
    self.head = Linear(prev, num_classes)

  def forward(self, x):
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      x = F.relu(norm(conv(x)))
      if i < len(self.convs) - 1:
        x = F.max_pool2d(x, 2, 2)
    return self.head(x.mean(dim=(2, 3)))


def build(image_size: int, channels: int, gen_features=(16, 32, 64),
          disc_features=(32, 64, 96), clf_features=(32, 64, 128)):
  """(generators, discriminators, classifier) of the binary problem."""
  gens = PerClass([UNet(channels, tuple(gen_features)) for _ in range(2)])
  discs = PerClass([Trunk(channels, image_size, tuple(disc_features)) for _ in range(2)])
  clf = CNNClassifier(channels, 2, tuple(clf_features))
  return gens, discs, clf


def param_count(module: nn.Module) -> int:
  """Trainable parameters (BatchNorm running statistics excluded, as nnx.Param does)."""
  return sum(p.numel() for p in module.parameters())


# NNX variable name -> torch name.
_NAMES = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
          "var": "running_var"}


def load_nnx(module: nn.Module, state) -> None:
  """Copy an NNX state (or module) of the matching JAX network into `module`.

  Conv kernels HWIO -> OIHW, linear kernels (in, out) -> (out, in); the attribute names
  of these modules follow the NNX ones, so paths map one to one.
  """
  from flax import nnx
  if isinstance(state, nnx.Module):
    state = nnx.state(state)
  target = module.state_dict()
  seen = set()
  for path, var in nnx.to_flat_state(state):
    value = np.asarray(var.get_value() if isinstance(var, nnx.Variable) else var)
    name = ".".join(str(p) for p in path[:-1]) + "." + _NAMES[path[-1]]
    if value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)
    elif value.ndim == 2:
      value = value.T
    if name not in target or tuple(target[name].shape) != value.shape:
      raise ValueError(f"{'.'.join(map(str, path))} {value.shape} has no match in "
                       f"{type(module).__name__}")
    target[name] = torch.tensor(value, dtype=target[name].dtype)
    seen.add(name)
  missing = {n for n in target if not n.endswith("num_batches_tracked")} - seen
  if missing:
    raise ValueError(f"not in the NNX state: {sorted(missing)}")
  module.load_state_dict(target)


def to_nchw(images) -> torch.Tensor:
  """(..., H, W, C) array -> contiguous (..., C, H, W) float tensor."""
  x = torch.as_tensor(np.asarray(images, np.float32))
  return x.movedim(-1, -3).contiguous()


def _bce(logits, real: bool):
  target = torch.ones_like(logits) if real else torch.zeros_like(logits)
  return F.binary_cross_entropy_with_logits(logits, target)


def _mse_mae(a, b):
  d = a - b
  return torch.mean(d * d) + torch.mean(torch.abs(d))


def make_step(gens: PerClass, discs: PerClass, clf: CNNClassifier, *,
              symmetric: bool = True, weights: dict | None = None, lr: float = 1e-4,
              b1: float = 0.5, b2: float = 0.999, bf16: bool = False,
              compiled: bool = False):
  """One SyCE (or CyCE) train step, `step(images, eps=None) -> metrics`, as in gan.py.

  `images` is (2, B, C, H, W), grouped by the classifier's prediction. The step updates
  the discriminators (real/fake BCE + gradient penalty on interpolates with per-example
  weights `eps` (2, B, 1, 1, 1), uniform if not given), then the generators against the
  updated discriminators; Adam for both. The classifier stays frozen in eval mode.
  `bf16` runs generators and discriminators under CPU bfloat16 autocast (parameters,
  losses and the classifier stay float32); `compiled` wraps the step in torch.compile.
  The JAX step's non-finite guard (keep the old state if a loss is NaN) is left out.
  """
  w = {**(SYCE_WEIGHTS if symmetric else CYCE_WEIGHTS), **(weights or {})}
  clf.eval()
  for p in clf.parameters():
    p.requires_grad_(False)
  g_params, d_params = list(gens.parameters()), list(discs.parameters())
  g_opt = torch.optim.Adam(g_params, lr=lr, betas=(b1, b2), eps=1e-8)
  d_opt = torch.optim.Adam(d_params, lr=lr, betas=(b1, b2), eps=1e-8)
  G, D = gens.nets, discs.nets

  def amp():
    if bf16:
      return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()

  def f(x):
    with torch.autocast("cpu", enabled=False):
      return clf(x.float()).float()

  def ce(logits, first: int, b: int):
    """Cross-entropy of flattened groups: group 0 labelled `first`, group 1 the other."""
    labels = torch.tensor([first, 1 - first], device=logits.device)
    return F.cross_entropy(logits, labels.repeat_interleave(b))

  def critic(z):
    with amp():
      return D[0](z[0]).sum() + D[1](z[1]).sum()

  def input_grad(z):
    """d critic / d z, itself differentiable with respect to the discriminators."""
    if compiled:
      # AOT autograd has no double backward; a functorch grad is traced into the
      # forward graph instead, so the outer backward is first order.
      return torch.func.grad(critic)(z)
    z = z.requires_grad_(True)
    return torch.autograd.grad(critic(z), z, create_graph=True)[0]

  def d_phase(xs, eps):
    x0, x1 = xs[0], xs[1]
    with torch.no_grad(), amp():
      fk0, fk1 = G[0](x0).float(), G[1](x1).float()   # aimed at class 1, class 0
    with amp():
      real = _bce(torch.cat([D[0](x0), D[1](x1)]), True)
      fake = _bce(torch.cat([D[1](fk0), D[0](fk1)]), False)
    # Real images of class c against the fakes aimed at c.
    interp = eps * xs + (1.0 - eps) * torch.stack([fk1, fk0])
    grads = input_grad(interp)
    norms = torch.sqrt(torch.sum(grads * grads, dim=(-3, -2, -1)) + 1e-12)
    gp = torch.mean((norms - 1.0) ** 2)
    loss = real + fake + w["gp"] * gp
    return loss, {"d_real": real, "d_fake": fake, "d_gp": gp, "d_loss": loss}

  def g_phase(xs):
    b = xs.shape[1]
    x0, x1 = xs[0], xs[1]
    with amp():
      xa0, xa1 = G[0](x0), G[1](x1)
      xa = torch.stack([xa0, xa1])
      cycled = torch.stack([G[1](xa0), G[0](xa1)])
      adv = _bce(torch.cat([D[1](xa0), D[0](xa1)]), True)
      if symmetric:
        twice = torch.stack([G[0](xa0), G[1](xa1)])
    flat = lambda t: t.reshape((-1,) + t.shape[2:])
    terms = {
        "flip": ce(f(flat(xa)), 1, b),
        "adv": adv,
        "cycle": _mse_mae(xs, cycled),
        "cycle_cls": ce(f(flat(cycled)), 0, b),
        "l1": torch.mean(torch.abs(xa - xs)),
    }
    if symmetric:
      terms["sym"] = _mse_mae(xs, twice)
      terms["sym_cls"] = ce(f(flat(twice)), 0, b)
    loss = sum(w[n] * v for n, v in terms.items())
    return loss, {**{f"g_{n}": v for n, v in terms.items()}, "g_loss": loss}

  def step(images, eps=None):
    if eps is None:
      eps = torch.rand(images.shape[:2] + (1, 1, 1), device=images.device)
    d_loss, d_metrics = d_phase(images, eps)
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward(inputs=d_params)
    d_opt.step()
    g_loss, g_metrics = g_phase(images)
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward(inputs=g_params)
    g_opt.step()
    return {k: v.detach() for k, v in {**d_metrics, **g_metrics}.items()}

  # Static shapes: a second size in the same process gets its own graphs, not a slower
  # dynamic-shape recompile.
  return torch.compile(step, dynamic=False) if compiled else step


def check_against_jax(image_size: int = 16, channels: int = 3, per_class: int = 4,
                      gen_features=(8, 16), disc_features=(8, 16), clf_features=(8, 16),
                      steps: int = 2, compiled: bool = False, seed: int = 0) -> dict:
  """Max abs differences between these modules and cfx_jax's, on copied weights.

  The JAX generator heads and BatchNorm statistics are randomised first (at
  initialisation the heads are zero, which would hide the whole generator). Returns
  parameter counts of both sides, the forward differences, and per step the largest
  difference over all loss terms and the JAX and torch g_loss.
  """
  import jax
  import jax.numpy as jnp
  from flax import nnx

  import cfx_jax
  from cfx_jax.methods import ModelSpec
  from cfx_jax.methods.conditional import gan, get_recipe
  from cfx_jax.models.reference_cnn import CNNClassifier as JaxCNN

  spec = ModelSpec(image_size, channels, 2, tuple(gen_features), tuple(disc_features))
  method = get_recipe("syce")
  models, state = gan.init(method, spec, seed=seed, lr=1e-4, b1=0.5)
  rng = np.random.default_rng(seed)
  normal = lambda shape, scale: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
  jgen = nnx.merge(models.gen_def, state.gen)
  for net in jgen.nets:
    net.heads[0].kernel[...] = normal(net.heads[0].kernel.shape, 0.1)
  state = state.replace(gen=nnx.split(jgen)[1])
  jdisc = nnx.merge(models.disc_def, state.disc)
  jclf = JaxCNN(channels, 2, features=tuple(clf_features), rngs=nnx.Rngs(seed + 7))
  for norm in jclf.norms:
    norm.mean[...] = normal(norm.mean.shape, 0.1)
    norm.var[...] = jnp.exp(normal(norm.var.shape, 0.3))
  clf_fn = cfx_jax.as_classifier(jclf, (image_size, image_size, channels))

  gens, discs, clf = build(image_size, channels, gen_features, disc_features, clf_features)
  load_nnx(gens, state.gen)
  load_nnx(discs, state.disc)
  load_nnx(clf, jclf)
  clf.eval()
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  out = {"params_jax": {"generators": count(jgen), "discriminators": count(jdisc),
                        "classifier": count(jclf)},
         "params_torch": {"generators": param_count(gens),
                          "discriminators": param_count(discs),
                          "classifier": param_count(clf)}}

  x = rng.uniform(-1, 1, (2, per_class, image_size, image_size, channels)).astype(np.float32)
  xt = to_nchw(x)
  diff = lambda a, b: float(np.max(np.abs(np.asarray(a) - b.detach().numpy())))
  with torch.no_grad():
    out["generator"] = max(
        diff(jnp.moveaxis(jgen.nets[i](x[i]), -1, 1), gens.nets[i](xt[i])) for i in (0, 1))
    out["discriminator"] = max(diff(jdisc.nets[i](x[i]), discs.nets[i](xt[i])) for i in (0, 1))
    out["classifier"] = diff(jclf(x[0]), clf(xt[0]))

  jstep = jax.jit(gan.make_train_step(method, models, clf_fn.apply, {}))
  tstep = make_step(gens, discs, clf, compiled=compiled)
  out["steps"] = []
  for _ in range(steps):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    # The gradient penalty's key of discriminator step 0, as gan.make_train_step draws it.
    k_gp = jax.random.fold_in(jax.random.split(key, 6)[1], 0)
    eps = jax.random.uniform(k_gp, (2, per_class, 1, 1, 1))
    state, jm = jstep(state, clf_fn.params, x)
    tm = tstep(xt, torch.tensor(np.asarray(eps)))
    out["steps"].append({"max_loss_diff": max(diff(jm[k], tm[k]) for k in tm),
                         "g_loss_jax": float(jm["g_loss"]),
                         "g_loss_torch": float(tm["g_loss"])})
  ref_gens, ref_discs, _ = build(image_size, channels, gen_features, disc_features,
                                 clf_features)
  load_nnx(ref_gens, state.gen)
  load_nnx(ref_discs, state.disc)
  pairs = zip([*gens.parameters(), *discs.parameters()],
              [*ref_gens.parameters(), *ref_discs.parameters()])
  with torch.no_grad():
    out["params_after_steps"] = max(float((a - b).abs().max()) for a, b in pairs)
  return out


def channels_last(modules, images: torch.Tensor):
  """Move modules and grouped images (G, B, C, H, W) to NHWC strides, oneDNN's layout."""
  for m in modules:
    m.to(memory_format=torch.channels_last)
  return images.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def time_steps(step, images, steps: int, warmup: int = 3) -> dict:
  """Median and spread of the wall time of `steps` calls after `warmup` calls."""
  t0 = time.perf_counter()
  step(images)
  first = time.perf_counter() - t0
  for _ in range(warmup - 1):
    step(images)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    metrics = step(images)
    float(metrics["g_loss"])
    times.append(time.perf_counter() - t0)
  return {"first_step_s": first, "ms_per_step_median": 1000 * float(np.median(times)),
          "ms_per_step_p10_p90": [1000 * float(np.percentile(times, q)) for q in (10, 90)],
          "g_loss": float(metrics["g_loss"])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image-size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--per-class", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
  parser.add_argument("--variants", nargs="*",
                      default=["eager", "compiled", "eager-bf16", "eager-cl"],
                      help="eager|compiled, optionally with -bf16 and/or -cl "
                           "(channels-last memory format)")
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  s, c = args.image_size, args.channels
  images = torch.rand(2, args.per_class, c, s, s,
                      generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
  results = {"torch": torch.__version__, "threads": torch.get_num_threads(),
             "image_shape": [s, s, c], "per_class": args.per_class}
  for variant in args.variants:
    opts = set(variant.split("-"))
    torch.manual_seed(0)
    gens, discs, clf = build(s, c)
    results["params"] = {"generators": param_count(gens),
                         "discriminators": param_count(discs),
                         "classifier": param_count(clf)}
    x = channels_last((gens, discs, clf), images) if "cl" in opts else images
    step = make_step(gens, discs, clf, bf16="bf16" in opts, compiled="compiled" in opts)
    results[variant] = time_steps(step, x, args.steps)
    print(variant, json.dumps(results[variant]), flush=True)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
