"""`cfx-jax`, the installed command line.

    cfx-jax train --config lesions_syce --workdir runs/x [--config.explainer.steps=2000]
    cfx-jax evaluate --config lesions_leaderboard --workdir runs/leaderboard
    cfx-jax leaderboard runs/leaderboard
    cfx-jax explain --classifier mypkg.models:make_classifier --images x.npy --out out/

`--config` is the name of a config shipped with the package (the repository's
`configs/`, installed as `cfx_jax.configs`) or the path of a config file;
`--config.<field>=<value>` overrides a field, as with `python -m train`. The library
only logs; this module and `python -m train` show its messages.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys

import numpy as np

import cfx_jax
from cfx_jax.cli.inputs import (
  PROG,
  CliError,
  load_classifier,
  load_config,
  load_images,
  one_line,
  resolve_config,
  shipped_configs,
)

logger = logging.getLogger(__name__)

# What a wrong setting, value or path raises: the library checks its arguments with
# ValueError and TypeError. Other exceptions are bugs and keep their traceback.
USER_ERRORS = (CliError, FileNotFoundError, ValueError, TypeError)

@contextlib.contextmanager
def console_logging(level: int = logging.INFO):
  """Show the library's log records as plain lines on stdout while a command runs.

  The records stop at the `cfx_jax` logger, so a root handler (absl's, under
  `absl.app.run`) does not print them twice; the previous state returns afterwards.
  """
  root = logging.getLogger("cfx_jax")
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(logging.Formatter("%(message)s"))
  saved = root.level, root.propagate
  root.addHandler(handler)
  root.setLevel(level)
  root.propagate = False
  try:
    yield
  finally:
    root.removeHandler(handler)
    root.setLevel(saved[0])
    root.propagate = saved[1]


def _train(args, overrides) -> int:
  from cfx_jax.engine import runtime
  from cfx_jax.jobs.train import train_and_evaluate

  config = load_config(args.config, overrides)
  runtime.run_job([PROG], train_and_evaluate, config, args.workdir)
  return 0


def _evaluate(args, overrides) -> int:
  from cfx_jax.engine import runtime
  from cfx_jax.jobs.leaderboard import run_leaderboard

  config = load_config(args.config, overrides)
  runtime.run_job([PROG], run_leaderboard, config, args.workdir)
  logger.info("wrote %s", os.path.join(args.workdir, "leaderboard.md"))
  return 0


def _leaderboard(args, overrides) -> int:
  from cfx_jax.jobs.leaderboard import COLUMNS, table

  path = os.path.join(args.workdir, "leaderboard.json")
  if not os.path.exists(path):
    raise CliError(f"{path} does not exist; `{PROG} evaluate` writes it")
  with open(path) as f:
    result = json.load(f)
  for row in result["methods"].values():  # JSON holds undefined scores as null
    for score in row["scores"].values():
      for k in ("mean", "ci95"):
        score[k] = float("nan") if score.get(k) is None else score[k]
  print(f"# Leaderboard: {result['dataset']} ({result['num_images']} test images)\n")
  for title, columns in COLUMNS.items():
    text = table(result, columns)
    if text:
      print(f"## {title.capitalize()}\n\n{text}\n")
  return 0


def _explain(args, overrides) -> int:
  if args.method not in cfx_jax.METHODS:  # checked here: listing them imports JAX
    raise CliError(f"--method {args.method!r} is not a method; choose from "
                   f"{', '.join(cfx_jax.METHODS)}")
  if args.value_range is not None and not args.value_range[0] < args.value_range[1]:
    raise CliError(f"--value-range needs LO < HI, got {args.value_range}")
  value_range = None if args.value_range is None else tuple(args.value_range)
  settings = parse_settings(args.set)
  from cfx_jax.engine import runtime
  runtime.enable_compilation_cache()  # before the classifier's code compiles anything
  classifier = load_classifier(args.classifier)
  x = load_images(args.images, args.value_range)
  logger.info("explain: %d images of shape %s from %s, method %s", len(x), x.shape[1:],
              args.images, args.method)
  explainer = cfx_jax.fit_explainer(classifier, x, method=args.method, steps=args.steps,
                                    batch_size=args.batch_size, seed=args.seed,
                                    workdir=args.workdir, config=settings or None,
                                    outputs=args.outputs, value_range=value_range)
  out = explainer.explain(x)
  paths = write_explanations(args.out, x, out, method=args.method, source=args.images,
                             classifier=args.classifier, value_range=args.value_range)
  logger.info("wrote %s", ", ".join(paths))
  return 0


def parse_settings(items: list[str]) -> dict:
  """`--set model.gen_features=(8,16)` -> {"model": {"gen_features": (8, 16)}}: values
  are Python literals, anything else is a string."""
  import ast

  settings: dict = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise CliError(f"--set takes KEY=VALUE, got {item!r}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split(".")
    node = settings
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return settings


def write_explanations(folder: str, images, out, *, method: str, source: str,
                       classifier: str, value_range=None) -> list[str]:
  """explanations.npz (every array of `out`), explanations.png, metrics.json, report.md."""
  from cfx_jax import report
  from cfx_jax.metrics import counterfactual_report

  os.makedirs(folder, exist_ok=True)
  npz = out.save(os.path.join(folder, "explanations.npz"))
  shapes = {f.name: np.shape(getattr(out, f.name)) for f in dataclasses.fields(out)
            if getattr(out, f.name) is not None}
  lo, hi = value_range or ((0.0, 255.0) if images.dtype == np.uint8 else (-1.0, 1.0))

  def shown(a):  # the figure draws images in [-1, 1]
    return None if a is None else (np.asarray(a, np.float32) - lo) * (2.0 / (hi - lo)) - 1.0

  figure = os.path.join(folder, "explanations.png")
  rows = min(8, len(out))
  metrics = {"method": method, "num_images": int(len(out)), "image_shape": list(images.shape[1:])}
  if out.has_counterfactual:
    report.save_explanation_grid(
        figure, shown(images), dataclasses.replace(out, counterfactual=shown(out.counterfactual),
                                                   stable=shown(out.stable)), num_rows=rows)
    metrics["counterfactual"] = counterfactual_report(images, out)
  else:
    report.save_method_grid(figure, shown(images), {method: np.asarray(out.maps)},
                            num_rows=rows)
  report.save_json(os.path.join(folder, "metrics.json"), metrics)
  sections = {"Summary": _summary(metrics, source, classifier, (lo, hi)),
              "Files": ("`explanations.npz` holds the explanation's arrays: "
                        + ", ".join(f"`{k}` {v}" for k, v in shapes.items()) + ".")}
  md = report.write_report(os.path.join(folder, "report.md"),
                           title=f"Counterfactual explanations: {method}", metrics=metrics,
                           sections=sections, images=[figure])
  return [md, figure, npz]


def _summary(metrics: dict, source: str, classifier: str, value_range) -> str:
  text = (f"`{metrics['method']}` was fitted on the {metrics['num_images']} images of "
          f"`{source}` (shape {tuple(metrics['image_shape'])}, values in "
          f"[{value_range[0]:g}, {value_range[1]:g}]) against `{classifier}`, then explained "
          "the same images")
  cf = metrics.get("counterfactual")
  if cf:
    text += (f": {cf['flip_rate']:.1%} of the counterfactuals reach their target class, "
             f"changing {cf['proximity_l1']:.4f} per value on average")
  return text + "."


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=PROG, description="Counterfactual explanations of image classifiers, in JAX.",
      epilog="Compiled programs are cached in $XDG_CACHE_HOME/cfx_jax/jax "
      "(~/.cache/cfx_jax/jax) or $CFX_JAX_COMPILATION_CACHE; set it empty to turn the "
      "cache off.")
  parser.add_argument("--version", action="version", version=cfx_jax.__version__)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--debug", action="store_true",
                      help="show the traceback of an error, not just its message")
  overrides = ("Fields of the config are overridden with --config.<field>=<value> after the "
               "other flags, e.g. --config.explainer.steps=2000.")
  configs = "a shipped config by name (" + ", ".join(shipped_configs()) + ") or a config file"

  def config_command(name, run, help_text, description, workdir_help):
    p = sub.add_parser(name, parents=[common], help=help_text, description=description,
                       epilog=overrides)
    p.add_argument("--config", required=True, help=configs)
    p.add_argument("--workdir", required=True, help=workdir_help)
    p.set_defaults(run=run, overrides=True)

  config_command("train", _train, "train and evaluate one experiment config",
                 "Train the classifier, fit and evaluate the explainer of a config (what "
                 "`python -m train` runs). Exit status 75: stopped by SIGTERM after a "
                 "checkpoint; run the same command again to resume.",
                 "directory for checkpoints and reports")
  config_command("evaluate", _evaluate, "score every method of a leaderboard config",
                 "Train what the work directory lacks (classifier, each explainer per "
                 "seed), score every method and write leaderboard.md, leaderboard.json and "
                 "its figures (what `python -m train.evaluate` runs). Rerunning reuses "
                 "everything already trained.",
                 "directory for models and the leaderboard")

  p = sub.add_parser("leaderboard", parents=[common], help="print the tables of a finished leaderboard",
                     description="Print the score tables of the leaderboard.json that "
                     f"`{PROG} evaluate` wrote to WORKDIR, as markdown.")
  p.add_argument("workdir", metavar="WORKDIR")
  p.set_defaults(run=_leaderboard, overrides=False)

  p = sub.add_parser(
      "explain", parents=[common], help="fit an explainer on images and explain them",
      description="Fit an explainer of CLASSIFIER on the images, explain the same images "
      "and write report.md, explanations.png, metrics.json and explanations.npz (maps, "
      "target, probs, counterfactual, ...) to --out.")
  p.add_argument("--classifier", required=True, metavar="SPEC",
                 help="'package.module:function', a function of no arguments returning a "
                 "JAX-traceable callable images -> logits (N, K) or one binary logit (N,), "
                 "an NNX module or a cfx_jax.Classifier (the current directory is searched "
                 "first); or a directory with a classifier saved by the train job "
                 "(<workdir>/classifier)")
  p.add_argument("--images", required=True, metavar="PATH",
                 help="a .npy (N, H, W[, C]), a .npz (key 'image' or 'images', or its only "
                 "array) or a folder of PNGs; arrays in [-1, 1] unless --value-range")
  p.add_argument("--method", default="syce",
                 help="an explanation method, one of cfx_jax.METHODS (default: syce)")
  p.add_argument("--steps", type=int, default=None, help="training steps (default: by image size)")
  p.add_argument("--batch-size", type=int, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a setting of the method, repeatable: --set num_devices=1 "
                 "--set model.gen_features=(8,16)")
  p.add_argument("--outputs", choices=("logits", "probabilities"), default="logits",
                 help="what the classifier returns (default: logits)")
  p.add_argument("--value-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                 help="value range of the images the classifier takes (default: -1 1); "
                 "PNG values are mapped onto it")
  p.add_argument("--workdir", default=None,
                 help="checkpoints, resumption and the saved explainer (optional)")
  p.add_argument("--out", required=True, metavar="DIR", help="folder for the outputs")
  p.set_defaults(run=_explain, overrides=False)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra and not args.overrides:
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # checkpointing chatter
  with console_logging():
    try:
      return args.run(args, extra)
    except USER_ERRORS as e:
      if args.debug:
        raise
      hint = "" if isinstance(e, CliError) else " (--debug shows the traceback)"
      print(f"{PROG} {args.command}: error: {one_line(e)}{hint}", file=sys.stderr)
      return 2


__all__ = ["CliError", "console_logging", "load_classifier", "load_config", "load_images",
           "main", "resolve_config", "write_explanations"]

