"""Recipes: a YAML file describing a whole run (model, data, method, pruning, training, output),
validated with pydantic; ``run_recipe`` carries it out and ``load_run`` rebuilds its model."""

from .load import RecipeError, load_recipe, save_recipe
from .run import load_run, run_recipe
from .schema import Recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "load_run", "run_recipe", "save_recipe"]
