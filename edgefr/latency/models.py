"""Model files for measurement: blocks and whole networks converted with the runtime's deployment flow, cached."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import torch

from edgefr.convert import FLOW_VERSION, RUNTIME_SUFFIX, convert_for_runtime
from edgefr.paths import cache_dir
from edgefr.space.arch import Arch
from edgefr.space.blocks import BlockSpec, ConvBNAct
from edgefr.space.model import FaceNet


def context_key(res: int, channels: int) -> str:
    return f"context:r{res}:c{channels}"


def context_module(channels: int) -> torch.nn.Module:
    """A cheap stand-in for "the block before": a linear 3x3 depthwise conv that keeps the shape.

    A standalone block pays costs a whole graph pays once: the runtime's layout reorders (ORT's NCHW <-> NCHWc),
    quantize/dequantize at int8 model boundaries, per-call overhead. Measuring context->block and the context
    alone, and taking the difference, leaves the block's cost inside a graph.
    """
    return ConvBNAct(channels, channels, 3, groups=channels, act=None)


def converter_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of what writes model files (tables and cached files are keyed by the default set)."""
    versions = {"edgefr-flow": FLOW_VERSION}
    for dist in ("torch", "onnx", "onnxruntime", "onnxslim", "litert-torch", "ai-edge-litert", *extra):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def _seed_for(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class ModelFileCache:
    """Converted model files under the cache dir, keyed by what they are and how they were converted.

    Converting costs about a second per block (litert-torch) against ~0.3 s to measure it, so a re-profile
    (a second pass, a resumed run, another device with the same runtime/dtype) must not convert again.
    """

    def __init__(self, runtime: str, dtype: str, root: Path | None = None):
        self.runtime, self.dtype = runtime, dtype
        versions = "-".join(f"{k}{v}" for k, v in sorted(converter_versions().items()))
        flow = hashlib.sha256(f"{runtime}|{dtype}|{versions}".encode()).hexdigest()[:12]
        self.root = (root or cache_dir() / "models") / f"{runtime}-{dtype}-{flow}"

    def _file(self, identity: str) -> Path:
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        return self.root / f"{digest}{RUNTIME_SUFFIX[self.runtime]}"

    def _convert(self, identity: str, build, example: torch.Tensor) -> Path:
        path = self._file(identity)
        if not path.is_file():
            torch.manual_seed(_seed_for(identity))  # deterministic weights: same file for the same block
            convert_for_runtime(build().eval(), example, self.runtime, self.dtype, path)
        return path

    def block(self, spec: BlockSpec) -> Path:
        """The stem standalone (it is at the graph input in every net); any other block behind its context."""
        example = torch.zeros(spec.input_shape())
        if spec.kind == "stem":
            return self._convert(spec.key, spec.build, example)
        return self._convert(f"in-context:{spec.key}",
                             lambda: torch.nn.Sequential(context_module(spec.cin), spec.build()), example)

    def context(self, res: int, channels: int) -> Path:
        return self._convert(context_key(res, channels), lambda: context_module(channels),
                             torch.zeros(1, channels, res, res))

    def network(self, arch: Arch) -> Path:
        return self._convert("net:" + arch.to_json(), lambda: FaceNet(arch),
                             torch.zeros(1, 3, arch.input_size, arch.input_size))
