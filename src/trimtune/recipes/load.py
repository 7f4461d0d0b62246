"""Read a recipe (YAML), apply ``--set key.sub=value`` overrides, validate, save the resolved one.

Every problem becomes one ``RecipeError`` whose message names the field, the bad value and what
is allowed (with a "did you mean" for a misspelt key)."""

from __future__ import annotations

import os
import tempfile
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from .schema import Recipe, did_you_mean

RESOLVED_NAME = "recipe.yaml"


class RecipeError(ValueError):
    """The recipe (or an override) is not valid; a usage error."""


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections (model, data, method, ...), got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return validate(raw, str(path))


def apply_override(raw: dict, item: str) -> None:
    """``key.sub=value``; the value is read as YAML (numbers, booleans, lists, null)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set expects KEY.SUB=VALUE, got {item!r}")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {key}: {part} is not a section")
    node[leaf] = yaml.safe_load(value)


def validate(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(_describe(e) for e in err.errors())
        raise RecipeError(f"{source}: {problems}") from None


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = _fields_at(error["loc"][:-1])
        return f"unknown key {where}{did_you_mean(str(error['loc'][-1]), allowed)}; allowed: {allowed}"
    if error["type"] == "missing":
        return f"missing key {where}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error":  # from a config dataclass or our own checks: names its field
        return message
    return f"{where} = {error.get('input')!r}: {message}"


def _fields_at(loc) -> list[str]:
    """The keys a section of the recipe allows (walking the pydantic models along ``loc``)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        annotation = model.model_fields[part].annotation
        model = next(a for a in (annotation, *typing.get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel))
    return list(model.model_fields)


def save_recipe(recipe: Recipe, run_dir: Path) -> Path:
    """The resolved recipe (defaults filled in, overrides applied), written atomically."""
    path = run_dir / RESOLVED_NAME
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".recipe.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(recipe.model_dump(mode="json"), f, sort_keys=False)
    os.replace(tmp, path)
    return path
