"""Conditional-generator explainers: CyCE and SyCE (`cycle.py`), SAGen (`sagen.py`).

Each is a `GeneratorRecipe` (`recipe.py`): all three train with one GAN step (`gan.py`)
on the engine's loop (`train.py`), and the fitted result is a `GeneratorExplainer`
(`explainer.py`). `RECIPES` are the family's members; `cfx_jax.methods.registry` names
them beside the other methods.
"""

from cfx_jax.methods.conditional.cycle import CycleRecipe
from cfx_jax.methods.conditional.sagen import StableAdversarialRecipe

RECIPES = (CycleRecipe(symmetric=True), CycleRecipe(symmetric=False),
           StableAdversarialRecipe())


def get_recipe(name: str):
  """The recipe of the generator method `name`, as a config's `method` names it."""
  for recipe in RECIPES:
    if recipe.name == name:
      return recipe
  raise ValueError(f"unknown generator method {name!r}; available: "
                   f"{sorted(r.name for r in RECIPES)}")


__all__ = ["RECIPES", "CycleRecipe", "StableAdversarialRecipe", "get_recipe"]
