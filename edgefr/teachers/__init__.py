"""Teachers: big face models (SFace, faceplugin, any ONNX/TorchScript file, student checkpoints, ensembles)
behind `embed(uint8 NHWC RGB) -> float32 [N, D]`, and an on-disk cache of their embeddings of a dataset."""

from edgefr.teachers.base import EnsembleTeacher, Teacher, l2_normalize
from edgefr.teachers.cache import cached_embeddings
from edgefr.teachers.preprocessing import (
                                           INSIGHTFACE_PREPROCESSING,
                                           PREPROCESSING_KEYS,
                                           SFACE_PREPROCESSING,
                                           check_preprocessing,
                                           preprocess,
)
from edgefr.teachers.registry import list_teachers, load_model_file, load_teacher, register_teacher

__all__ = [
                                           "INSIGHTFACE_PREPROCESSING",
                                           "PREPROCESSING_KEYS",
                                           "SFACE_PREPROCESSING",
                                           "EnsembleTeacher",
                                           "Teacher",
                                           "cached_embeddings",
                                           "check_preprocessing",
                                           "l2_normalize",
                                           "list_teachers",
                                           "load_model_file",
                                           "load_teacher",
                                           "preprocess",
                                           "register_teacher",
]
