"""Where edgefr finds its data folders: next to the package in a checkout, overridable by environment."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _folder(env: str, default: Path) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser() if value else default


def devices_dir() -> Path:
    return _folder("EDGEFR_DEVICES", REPO_ROOT / "devices")


def latency_tables_dir() -> Path:
    return _folder("EDGEFR_LATENCY_TABLES", REPO_ROOT / "latency_tables")


def export_recipes_dir() -> Path:
    return _folder("EDGEFR_EXPORT_RECIPES", REPO_ROOT / "export")


def shared_dir() -> Path:
    """`../shared` beside the checkout: real faces and pretrained models (see its README)."""
    return _folder("EDGEFR_SHARED", REPO_ROOT.parent / "shared")


def cache_dir() -> Path:
    return _folder("EDGEFR_CACHE", Path.home() / ".cache" / "edgefr")
