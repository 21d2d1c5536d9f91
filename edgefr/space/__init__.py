"""The search space: blocks, architectures (JSON), the model builder and the registry of named models."""

from edgefr.space.arch import ARCH_SCHEMA, Arch, LayerChoice, Stage, arch_from_dict, load_arch_file
from edgefr.space.blocks import ACTIVATIONS, BlockSpec
from edgefr.space.checkpoint import CHECKPOINT_FORMAT, load_student, read_checkpoint, save_student
from edgefr.space.flops import count_flops, count_params
from edgefr.space.model import STUDENT_PREPROCESSING, FaceNet
from edgefr.space.registry import create_model, list_models, register_model, resolve_arch, scaled_mobilefacenet
from edgefr.space.searchspace import MFN_SPACE, SearchSpace, StageSpace, get_space

__all__ = [
    "ARCH_SCHEMA", "ACTIVATIONS", "CHECKPOINT_FORMAT", "load_student", "read_checkpoint", "save_student", "Arch",
    "BlockSpec", "FaceNet", "LayerChoice", "MFN_SPACE", "STUDENT_PREPROCESSING",
    "SearchSpace", "Stage", "StageSpace", "arch_from_dict", "count_flops", "count_params", "create_model",
    "get_space", "list_models", "load_arch_file", "register_model", "resolve_arch", "scaled_mobilefacenet",
]
