"""Export recipes: `export/<format>.toml`, one table of tolerances per quantization (see the files' comments)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefr.errors import EdgefrError, read_toml_file
from edgefr.paths import export_recipes_dir

TOLERANCE_KEYS = ("min_mean_cosine", "min_min_cosine", "max_lfw_drop_pp", "max_latency_error_pct")


@dataclass(frozen=True)
class Tolerances:
    min_mean_cosine: float | None = None
    min_min_cosine: float | None = None
    max_lfw_drop_pp: float | None = None
    max_latency_error_pct: float | None = None
    source: str = ""


def recipe_path(fmt: str, folder: Path | None = None) -> Path:
    return (folder or export_recipes_dir()) / f"{fmt}.toml"


def load_tolerances(fmt: str, quantize: str, path: Path | None = None) -> Tolerances:
    """The tolerances of `quantize` in the format's recipe; a missing table or unknown key is an error."""
    path = path or recipe_path(fmt)
    recipe = read_toml_file(path, "export recipe", f"expected export/{fmt}.toml")
    if quantize not in recipe:
        raise EdgefrError(f"{path}: no [{quantize}] table of tolerances; it has {', '.join(recipe) or 'none'}")
    table = recipe[quantize]
    unknown = sorted(set(table) - set(TOLERANCE_KEYS))
    if unknown:
        raise EdgefrError(f"{path} [{quantize}]: unknown keys {unknown}; known: {list(TOLERANCE_KEYS)}")
    for key, value in table.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise EdgefrError(f"{path} [{quantize}]: {key} must be a number, got {value!r}")
    return Tolerances(**{k: float(v) for k, v in table.items()}, source=f"{path} [{quantize}]")
