"""Explanation methods, one package each; `registry.METHODS` names them all behind one
interface."""

from cfx_jax.methods.common import other_class
from cfx_jax.methods.conditional.recipe import GeneratorRecipe, ModelSpec
from cfx_jax.methods.registry import GENERATOR_METHODS, METHODS, Entry, Explainer, get

__all__ = ["GENERATOR_METHODS", "METHODS", "Entry", "Explainer", "GeneratorRecipe",
           "ModelSpec", "get", "other_class"]
