"""What the command line reads: configs by name or path, classifiers by
`module:function` or saved folder, images from .npy / .npz files or PNG folders."""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import os
import re
import sys

import numpy as np

import cfx_jax

PROG = "cfx-jax"
CONFIG_PACKAGE = "cfx_jax.configs"  # the repository's configs/, installed under cfx_jax
CONFIG_FOLDER = "configs"


class CliError(Exception):
  """A mistake on the command line: reported in one line, without a traceback."""


def shipped_configs() -> list[str]:
  """Names of the configs installed with the package."""
  try:
    folder = importlib.resources.files(CONFIG_PACKAGE)
  except ModuleNotFoundError:
    return []
  return sorted(p.name[:-3] for p in folder.iterdir()
                if p.name.endswith(".py") and p.name not in ("__init__.py", "common.py"))


def resolve_config(spec: str) -> str:
  """A config file path, or the name of a shipped config (`lesions_syce`,
  `lesions_syce.py` and `configs/lesions_syce.py` all name it) -> its file path. A
  `:argument` suffix (`lesions_syce:paper`) is kept: it is passed to `get_config`."""
  spec, colon, argument = spec.partition(":")
  if os.path.isfile(spec):
    return spec + colon + argument
  name = re.sub(r"\.py$", "", re.sub(rf"^{CONFIG_FOLDER}[/\\]", "", spec))
  if name.isidentifier() and name in shipped_configs():
    return str(importlib.resources.files(CONFIG_PACKAGE) / f"{name}.py") + colon + argument
  raise CliError(f"--config {spec!r} is neither a config file nor a shipped config; "
                 f"shipped: {', '.join(shipped_configs())}")


def load_config(spec: str, overrides: list[str]):
  """The config `spec` names with `--config.<field>=<value>` overrides applied, parsed
  exactly as `python -m train` parses them. A misspelt field is named with the closest
  one before absl sees it: its own message is a KeyError's repr."""
  after_name = False  # `--config.steps 5`: the value is the next argument
  for arg in overrides:
    if not (after_name or re.match(r"^--?(no)?config\.", arg)):
      raise CliError(f"unexpected argument {arg!r}; only --config.<field>=<value> "
                     "overrides may follow")
    after_name = not after_name and "=" not in arg and not arg.startswith(("-no", "--no"))
  path = resolve_config(spec)
  base = _parse_config(spec, [f"--config={path}"])
  for arg in overrides:
    name = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
    if name:
      check_setting(base, name.group(1))
  return _parse_config(spec, [f"--config={path}", *overrides])


def _parse_config(spec: str, args: list[str]):
  from absl import flags
  from ml_collections import config_flags

  argv = [PROG, *args]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "Config file.", flag_values=values,
                                           lock_config=True, sys_argv=argv)
  try:
    rest = values(argv)
  except flags.IllegalFlagValueError as e:
    if "Error whilst parsing config file" in str(e):  # its traceback as text: keep the error
      last = [line for line in str(e).splitlines() if line.strip()][-1]
      raise CliError(f"--config {spec!r}: {last}") from e
    raise CliError(one_line(e).removeprefix("flag ")) from e
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    raise CliError(f"--config {spec!r}: {one_line(e)}") from e
  if len(rest) > 1:
    raise CliError(f"unexpected arguments {rest[1:]}")
  return holder.value


def check_setting(config, name: str) -> None:
  """Raise a CliError when `name` (`explainer.steps`) is not a field of `config`,
  suggesting the closest one. Indexed and deeper names are left to absl."""
  import difflib

  parts = name.split(".")
  node = config
  for i, part in enumerate(parts):
    if not hasattr(node, "keys") or "[" in part:
      return
    keys = list(node.keys())
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=1)
      if close:
        hint = f"did you mean {'.'.join([*parts[:i], close[0], *parts[i + 1:]])}?"
      else:
        hint = f"{'.'.join(parts[:i]) or 'the config'} has {', '.join(sorted(keys))}"
      raise CliError(f"unknown setting {name}; {hint}")
    node = node[part]


def one_line(error: BaseException) -> str:
  """An exception's message on one line (a KeyError's str is the repr of its key)."""
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def load_classifier(spec: str):
  """`package.module:function` (called with no arguments; it returns the classifier) or
  a directory holding a classifier saved by the train job (`<workdir>/classifier`)."""
  if os.path.isdir(spec):
    if not os.path.exists(os.path.join(spec, "classifier.json")):
      raise CliError(f"--classifier {spec!r} is a directory without classifier.json; "
                     "give a classifier saved by the train job (e.g. runs/x/classifier)")
    from cfx_jax.jobs.classifier_training import load_classifier as load_saved
    return load_saved(os.path.abspath(spec))
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise CliError(f"--classifier must be 'package.module:function' or a directory "
                   f"holding classifier.json, got {spec!r}")
  module = _import(module_name, spec)
  fn = module
  for part in attr.split("."):
    if not hasattr(fn, part):
      raise CliError(f"--classifier {spec!r}: module {module_name!r} has no attribute "
                     f"{attr!r}")
    fn = getattr(fn, part)
  if not callable(fn):
    raise CliError(f"--classifier {spec!r}: {attr!r} is not a function")
  try:
    inspect.signature(fn).bind()
  except TypeError as e:
    raise CliError(f"--classifier {spec!r}: {attr!r} must take no arguments and return "
                   "the classifier") from e
  except ValueError:  # no signature to inspect (a builtin): let the call decide
    pass
  classifier = fn()
  if not (callable(classifier) or isinstance(classifier, cfx_jax.Classifier)):
    raise CliError(f"--classifier {spec!r} returned {type(classifier).__name__}, not a "
                   "callable images -> logits, an NNX module or a cfx_jax.Classifier")
  return classifier


def _import(module_name: str, spec: str):
  """Import as `python -m` would: the current directory comes first on the path."""
  here = os.getcwd()
  added = here not in sys.path
  if added:
    sys.path.insert(0, here)
  try:
    return importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    missing = e.name or ""
    if missing and (module_name == missing or module_name.startswith(missing + ".")):
      raise CliError(f"--classifier {spec!r}: no module named {missing!r} (looked in the "
                     "current directory and on PYTHONPATH)") from e
    raise
  finally:
    if added:
      sys.path.remove(here)


def load_images(path: str, value_range=None) -> np.ndarray:
  """(N, H, W, C) images from a .npy, a .npz (key `image` or `images`, or its only
  array) or a folder of PNGs. Arrays are taken as they are; PNG values, read in [0, 1],
  are mapped onto `value_range` ([-1, 1] by default)."""
  if os.path.isdir(path):
    x = _read_pngs(path)
    lo, hi = value_range or (-1.0, 1.0)
    return (lo + x * (hi - lo)).astype(np.float32)
  if not os.path.isfile(path):
    raise CliError(f"--images {path!r} does not exist")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npy":
    x = np.load(path)
  elif ext == ".npz":
    with np.load(path) as arrays:
      keys = list(arrays.keys())
      key = next((k for k in ("image", "images") if k in keys), None)
      if key is None and len(keys) == 1:
        key = keys[0]
      if key is None:
        raise CliError(f"--images {path!r} holds the arrays {keys}; name the images "
                       "'image' or 'images', or store only one array")
      x = arrays[key]
  else:
    raise CliError(f"--images must be a .npy or .npz file or a folder of PNGs, got {path!r}")
  if x.ndim == 3:  # (N, H, W): one channel
    x = x[..., None]
  if x.dtype == np.float64:
    x = x.astype(np.float32)
  return x


def _read_pngs(folder: str) -> np.ndarray:
  import matplotlib.image

  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".png"))
  if not names:
    raise CliError(f"--images {folder!r} holds no .png files")
  images = []
  for name in names:
    a = np.asarray(matplotlib.image.imread(os.path.join(folder, name)), np.float32)
    if a.ndim == 2:
      a = a[..., None]
    elif a.shape[-1] in (2, 4):  # drop the alpha channel
      a = a[..., :-1]
    images.append(a)
  shapes = sorted({a.shape for a in images})
  if len(shapes) > 1:
    raise CliError(f"the PNGs in {folder!r} differ in shape: {shapes}")
  return np.stack(images)


