"""Choose an explainer's setting by judges instead of by hand.

The candidates are a few settings of one method that differ in what the papers leave to
the user: how strongly proximity is charged, and, per direction, whether the generator
may redraw or only replace a region by its surroundings (the in-fill form,
`models/unet.py`), the form that removes evidence rather than tinting it. They train as
populations (`methods/conditional/population.py`, one compiled program per structural
group) on most of the caller's images; the rest are held out, and a judge
(`judges.py`) scores each candidate's counterfactuals of them. `choose` keeps the
candidates whose counterfactuals both the classifier and the judge accept, and of those
the one that edits least and most realistically. A second judge reports the choice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import ml_collections
import numpy as np

from cfx_jax import validation
from cfx_jax.classifier import Classifier
from cfx_jax.methods.conditional import population
from cfx_jax.methods.conditional.train import train_group
from cfx_jax.selection.judges import REPORT_JUDGE, SELECTION_JUDGE, Judge, split

logger = logging.getLogger(__name__)

# A candidate is accepted when the classifier and the judge both accept at least this
# share of its counterfactuals in every direction (or, if none does, when it comes
# within VALID_SLACK of the best).
VALID_BAR = 0.9
VALID_SLACK = 0.05
# Proximity charged four times as hard: where every edit redraws the object
# (sneaker/boot: a mean change of 0.3-0.5 per value at 300 steps, twice the distance to
# the nearest real image of the target class), one that stays closer. Weakening the
# realism term as well makes edits closer still, but one judge accepts them where
# another does not (docs/selection.md), so realism keeps its weight.
_CLOSE = {"weights.l1": 4.0}
# A flip pushed until the target wins by a margin (SyCE's flip with more than two
# classes): an edit that would stop at the decision boundary goes on (sneaker/boot:
# flip 0.988 against 0.945 with the two-class flip, docs/counterfactual_truth.md).
_FIRM = {"weights.flip": 1.0, "weights.flip_margin": 3.0}
# The weights of a smooth edit: the flip must hold for a weakened edit too, and the
# edit's total variation is charged (docs/counterfactual_truth.md): strokes and fades
# rather than scattered tints.
_SMOOTH = {"weights.tv": 3.0, "weights.flip_partial": 0.85}
# The in-fill form for a direction that removes: the generator can only replace a region
# by its surroundings, through a mask widened by a pixel, and is charged for where it
# edits (l0) rather than how much. The mask starts almost closed, and l0 charges a
# small opening most: at 1.0 (the hand-tuned quick start's) it stayed closed for 300
# steps of 32 lesion images behind a classifier of 500 steps, at 0.2 it opened
# (docs/selection.md).
_FILL = {**_SMOOTH, "model.mask_grow": 1, "weights.fill_l1": 0.0, "weights.fill_l0": 0.2}
# What acts only on the networks that in-fill (and the seed, which is every member's own).
_FILL_ONLY_KEYS = ("model.fill_only", "model.mask_grow", "weights.fill_l1", "weights.fill_l0",
                   "seed")


def _per_source(base, num_classes: int) -> bool:
  """Two classes and one network per source class (SyCE, CyCE)."""
  return base.method in ("syce", "cyce") and num_classes == 2 and not base.model.shared


def candidates(base: ml_collections.ConfigDict, num_classes: int) -> dict[str, dict]:
  """{name: overrides of `base`}: the settings a selection compares. Few, because on
  the CPU each costs a fit: the base (the generator edits), a close edit, a firm flip
  (two classes: with more the base has it) and a smooth edit (same networks, so one
  population with the base), and the in-fill form. With one network per source class
  (two classes, SyCE, CyCE) every network of the in-fill candidate only in-fills, and
  each direction's network is chosen apart (`compose`): a direction that removes
  evidence can take the in-fill, one that adds a smooth edit."""
  out = {"edit": {}, "close edit": dict(_CLOSE)}
  if num_classes == 2:
    out["firm flip"] = dict(_FIRM)
  out["smooth edit"] = dict(_SMOOTH)
  if _per_source(base, num_classes):
    out["in-fill"] = {"model.fill_only": (0, 1), **_FILL}
  else:  # one network for every direction: the in-fill form (which can still draw)
    out["in-fill"] = {"model.infill": True, "model.mask_grow": 1, "weights.tv": 3.0}
  return out


def member_config(base: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  c = base.copy_and_resolve_references()
  with c.unlocked():
    for key, value in overrides.items():
      *path, last = key.split(".")
      target = c
      for part in path:
        target = target[part]
      target[last] = value
  return c


def choose(scores: dict[str, dict], direction: str | None = None) -> str:
  """The candidate to keep: among those valid enough (`VALID_BAR`), the best sum of ranks
  in reach, realism (FID) and concentration, ties to the more valid. With `direction`,
  judged by that direction's scores alone."""
  def view(s):
    if direction is None:
      return s["overall"]
    d = s["directions"][direction]
    return {**d, "valid": min(d["flip"], d["oracle"])}
  finite = {n: view(s) for n, s in scores.items() if s.get("finite", True)}
  if not finite:
    raise ValueError("every candidate's training became non-finite; try a lower "
                     "learning_rate")
  best = max(v["valid"] for v in finite.values())
  bar = min(VALID_BAR, best - VALID_SLACK)
  eligible = sorted(n for n, v in finite.items() if v["valid"] >= bar)

  def ranks(key, sign):
    order = sorted(eligible, key=lambda n: sign * _number(finite[n][key]))
    return {n: order.index(n) for n in eligible}
  total = {n: 0 for n in eligible}
  for key, sign in (("reach", 1), ("fid", 1), ("concentration", -1)):
    for n, r in ranks(key, sign).items():
      total[n] += r
  return min(eligible, key=lambda n: (total[n], -finite[n]["valid"]))


def composable(base, num_classes: int) -> bool:
  """Whether each direction's generator can come from another candidate: two classes,
  one network per source class (SyCE, CyCE), whose counterfactuals each network makes
  alone (`map |x - G(x)|`: the residual form)."""
  return (_per_source(base, num_classes) and bool(base.model.residual)
          and base.map_reference in ("auto", "input"))


def compose(fitted: dict, by_direction: dict[str, str]):
  """One explainer whose network for source class s is that of the candidate chosen for
  direction s->t (`by_direction` {"s->t": name}); the in-fill form where that candidate
  has it."""
  from flax import nnx
  from cfx_jax.methods.conditional.explainer import GeneratorExplainer
  sources = {int(d.split("->")[0]): name for d, name in by_direction.items()}
  first = fitted[sources[0]]
  fills = tuple(s for s, n in sorted(sources.items()) if s in fitted[n].spec.fill_only)
  grow = max((fitted[n].spec.mask_grow for s, n in sources.items() if s in fills),
             default=0)
  spec = dataclasses.replace(first.spec, fill_only=fills, mask_grow=grow)
  gen_def, _ = nnx.split(nnx.eval_shape(lambda: first.method.build(spec, nnx.Rngs(0))[0]))
  params = jax.tree.map(lambda a: a, first.gen_params)
  for s, name in sources.items():
    params["nets"][s] = fitted[name].gen_params["nets"][s]
  config = dict(first.config)
  config["model"] = {**config["model"], "fill_only": list(fills), "mask_grow": grow}
  config["networks_from"] = dict(by_direction)  # each trained with its candidate's weights
  out = GeneratorExplainer(first.method, spec, gen_def, params, first.classifier,
                           chunk_size=first.chunk_size, map_reference=first.map_reference,
                           config=config)
  out.nonfinite_step = max(fitted[n].nonfinite_step for n in sources.values())
  return out


def final_overrides(overrides: dict[str, dict], by_direction: dict[str, str]) -> dict | None:
  """One setting from the candidates that the directions chose, where they agree on
  every weight that acts on a network that draws (the in-fill candidate is the smooth
  edit plus what acts only on in-filling networks), with only the source classes whose
  direction chose the in-fill network in-filling. None where they differ in any other
  (a firm flip for one direction, a smooth edit or a close edit for the other): their
  union would be a setting no judge has seen (sneaker/boot: the judge accepted 0.66 of
  its boots turned sneakers), so each chosen candidate is fitted again and the
  directions composed (`select`)."""
  chosen = sorted(set(by_direction.values()))
  shared = {n: {k: v for k, v in overrides[n].items() if k not in _FILL_ONLY_KEYS}
            for n in chosen}
  if any(shared[n] != shared[chosen[0]] for n in chosen):
    return None
  widest = max(chosen, key=lambda n: len(overrides[n]))
  out = dict(overrides[widest])
  fills = tuple(sorted(int(d.split("->")[0]) for d, name in by_direction.items()
                       if int(d.split("->")[0]) in overrides[name].get("model.fill_only", ())))
  if fills:
    out["model.fill_only"] = fills
  else:
    out.pop("model.fill_only", None)
  return out


def _number(v) -> float:
  return float("inf") if v is None or not np.isfinite(v) else float(v)


def select(classifier: Classifier, images: np.ndarray, base: ml_collections.ConfigDict,
           workdir: str | None = None, forms: dict[str, dict] | None = None):
  """Fit every candidate of `base.method` on most of `images`, judge them on the rest,
  and return the chosen explainer with the record in `explainer.selection`. `forms`
  ({name: overrides of `base`}) compares other settings than `candidates`."""
  t0 = time.time()
  s = base.select
  base = base.copy_and_resolve_references()
  # The explainer returned trains `steps` (or `select.final_steps`; 0: the chosen
  # candidate as it is); each candidate `select.steps`, or fewer if that is more.
  final_steps = int(base.steps or s.final_steps)
  base.steps = min(int(s.steps), final_steps) if final_steps > 0 else int(s.steps)
  base.batch_size = base.batch_size or int(s.batch_per_class) * classifier.num_classes
  predicted = classifier.predict(images, base.chunk_size)
  fit_idx, held_idx = split(predicted, float(s.held_out), int(base.seed))
  x_fit, x_held = images[fit_idx], images[held_idx]
  held = {"image": x_held, "label": predicted[held_idx]}
  where = (lambda name: os.path.join(workdir, "selection", name)) if workdir else (
      lambda name: None)
  judge = Judge.train(x_fit, predicted[fit_idx], held, steps=int(s.judge_steps),
                      path=where("judge"), progress=base.progress, **SELECTION_JUDGE)
  overrides = {}
  forms = forms if forms is not None else candidates(base, classifier.num_classes)
  for name, form in forms.items():
    for i in range(int(s.seeds)):  # seeds of one form train as one population
      label = name if i == 0 else f"{name}, seed {base.seed + i}"
      overrides[label] = {**form, "seed": int(base.seed) + i}
  members = {name: member_config(base, o) for name, o in overrides.items()}
  fitted = _train(classifier, x_fit, members, lambda i: where(f"group{i}"))
  scores, outs = {}, {}
  for name, explainer in fitted.items():
    outs[name] = explainer.explain(x_held)
    scores[name] = judge.score(x_held, predicted[held_idx], outs[name])
    scores[name]["finite"] = explainer.nonfinite_step < 0
  chosen = choose(scores)
  explainer = fitted[chosen]
  by_direction, composite = None, None
  if composable(base, classifier.num_classes):
    by_direction = {d: choose(scores, d) for d in scores[chosen]["directions"]}
    if len(set(by_direction.values())) > 1:
      explainer = compose(fitted, by_direction)
      chosen = " + ".join(f"{n} ({d})" for d, n in by_direction.items())
      outs[chosen] = explainer.explain(x_held)
      composite = judge.score(x_held, predicted[held_idx], outs[chosen])
  final, scored = None, chosen
  if final_steps > 0:  # the chosen setting, fitted again from the start
    setting = (final_overrides(overrides, by_direction) if by_direction
               else overrides[chosen])
    plan = ({"final": setting} if setting is not None else
            {n: overrides[n] for n in sorted(set(by_direction.values()))})
    configs = {n: member_config(base, {**o, "steps": final_steps}) for n, o in plan.items()}
    logger.info("selection: fitting the chosen setting for %d steps", final_steps)
    refits = _train(classifier, x_fit, configs,
                    lambda i: where("final" if i == 0 else f"final{i}"))
    refit = refits["final"] if setting is not None else compose(refits, by_direction)
    outs["final"] = refit.explain(x_held)
    final = {"steps": final_steps,
             "settings": (_settings(base, configs["final"]) if setting is not None else
                          {"networks_from": {d: _settings(base, configs[n])
                                             for d, n in by_direction.items()}}),
             "scores": judge.score(x_held, predicted[held_idx], outs["final"])}
    # Kept unless the judge finds it less valid than the candidate it came from.
    before = (composite or scores[chosen])["overall"]["valid"]
    final["kept"] = bool(final["scores"]["overall"]["valid"] >= before - VALID_SLACK)
    if final["kept"]:
      explainer, scored = refit, "final"
  judges = {"selection": {**_plain(SELECTION_JUDGE),
                          "agreement_with_classifier": judge.oracle.test_accuracy}}
  reported = None
  if s.report_judge:
    reporter = Judge.train(x_fit, predicted[fit_idx], held, steps=int(s.judge_steps),
                           path=where("report_judge"), progress=base.progress,
                           **REPORT_JUDGE)
    reported = reporter.score(x_held, predicted[held_idx], outs[scored])
    judges["report"] = {**_plain(REPORT_JUDGE),
                        "agreement_with_classifier": reporter.oracle.test_accuracy}
  explainer.selection = {
      "chosen": chosen, "by_direction": by_direction, "final": final, "reported": reported,
      "candidates": {**{n: {"settings": _settings(base, members[n]), "scores": scores[n]}
                        for n in members},
                     **({chosen: {"settings": {"networks_from": by_direction},
                                  "scores": composite}} if composite else {})},
      "judges": judges,
      "images": {"fit": int(len(fit_idx)), "held_out": int(len(held_idx))},
      "seconds": round(time.time() - t0, 1)}
  logger.info("selection: chose %r (%s)", chosen, {
      n: round(v["overall"]["valid"], 3) for n, v in scores.items()})
  if workdir:
    explainer.save(os.path.join(workdir, "explainer"))
  return explainer


def _train(classifier, images, configs: dict, where) -> dict:
  """{name: explainer}: the configs trained as populations, one per structural group
  (`population.group_key`), the i-th group's checkpoints in `where(i)`."""
  groups: dict[str, list[str]] = {}
  for name, c in configs.items():
    groups.setdefault(population.group_key(c), []).append(name)
  fitted = {}
  for i, names in enumerate(groups.values()):
    logger.info("selection: training %s", ", ".join(names))
    trained = train_group(classifier, images, [configs[n] for n in names], where(i))
    fitted.update(zip(names, trained))
  return fitted


def _settings(base, member) -> dict:
  """What a member sets differently from the base, flattened ("model.fill_only": [1])."""
  a = validation.flat(base)
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in validation.flat(member).items() if a.get(k) != v}


def _plain(d: dict) -> dict:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


__all__ = ["candidates", "choose", "member_config", "select"]
