"""Model files for measurement: blocks and whole networks converted with the runtime's deployment flow, cached."""

from __future__ import annotations

import hashlib
import importlib.metadata
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Callable

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


class ConversionPool:
    """Processes that convert model files side by side, started on first use.

    The exporters trace in Python on one core each, so a profile converts a chunk of blocks on every core; while a
    chunk is measured, the next chunk's files are converted ahead (`convert_ahead`) beside it (how many at once:
    `profile.lanes_beside_measurement`). Measured on the Intel host (2 cores, one measuring thread): 24 blocks'
    times with a conversion running on the other core were 0.988x their times without (median of 6 paired runs,
    0.976-1.021): the measurement's own core and its thread-CPU clock are not disturbed by one neighbour.
    Spawned, not forked: the parent's torch threads do not survive a fork.
    """

    def __init__(self, workers: int | None = None):
        self.workers = workers or len(os.sched_getaffinity(0))
        self._executor: ProcessPoolExecutor | None = None
        self._started: dict[Path, Future] = {}  # one conversion per file, whoever asks for it
        self._lock = threading.Lock()
        self._feeders: list[threading.Thread] = []
        self._closing = False

    def submit(self, cache: ModelFileCache, kind: str, args: tuple) -> Future:
        """The conversion of that file: started now, or the one already started for it."""
        with self._lock:
            return self._start(cache, kind, args)

    def _start(self, cache: ModelFileCache, kind: str, args: tuple) -> Future:
        path = cache.path(kind, *args)  # the caller holds the lock
        if path not in self._started:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                     initializer=_start_converter_process)
            self._started[path] = self._executor.submit(_convert_request, cache, kind, args)
        return self._started[path]

    def convert_ahead(self, cache: ModelFileCache, requests: dict[str, tuple], at_once: int) -> None:
        """Start converting the files of `requests` not cached yet in the background, `at_once` at a time (0:
        not at all), and return; `ModelFileCache.files` later waits for those still converting. A failed
        conversion raises there, when its file is asked for."""
        todo = [(kind, tuple(args)) for kind, *args in requests.values() if not cache.path(kind, *args).is_file()]

        def feed(share: list[tuple[str, tuple]]) -> None:
            for kind, args in share:
                with self._lock:
                    if self._closing:
                        return
                    future = self._start(cache, kind, args)
                wait([future])

        for lane in range(min(at_once, len(todo))):
            feeder = threading.Thread(target=feed, args=(todo[lane::at_once],), daemon=True)
            feeder.start()
            self._feeders.append(feeder)

    def __enter__(self) -> ConversionPool:
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._closing = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        for feeder in self._feeders:
            feeder.join()


def _start_converter_process() -> None:
    # Ctrl-C reaches the parent, which stops the pool; a worker finishes the file it is writing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # one conversion per core


def _convert_request(cache: ModelFileCache, kind: str, args: tuple) -> Path:
    return cache.convert(kind, *args)


class ModelFileCache:
    """Converted model files under the cache dir, keyed by what they are and how they were converted.

    Converting costs about a second per block (litert-torch) against ~0.3 s to measure it, so a re-profile
    (a second pass, a resumed run, another device with the same runtime/dtype) must not convert again.
    A file is written under a temporary name and renamed, so an interrupted conversion leaves no broken file.
    """

    def __init__(self, runtime: str, dtype: str, root: Path | None = None):
        self.runtime, self.dtype = runtime, dtype
        versions = "-".join(f"{k}{v}" for k, v in sorted(converter_versions().items()))
        flow = hashlib.sha256(f"{runtime}|{dtype}|{versions}".encode()).hexdigest()[:12]
        self.root = (root or cache_dir() / "models") / f"{runtime}-{dtype}-{flow}"

    def _file(self, identity: str) -> Path:
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        return self.root / f"{digest}{RUNTIME_SUFFIX[self.runtime]}"

    def path(self, kind: str, *args) -> Path:
        """Where the file of `kind` (see `_recipe`) is, converted or not."""
        return self._file(self._recipe(kind, *args)[0])

    def _recipe(self, kind: str, *args) -> tuple[str, Callable[[], torch.nn.Module], torch.Tensor]:
        """What a model file of `kind` is: its identity, a builder of the module and an example input.

        - "block" (spec): the stem standalone (it is at the graph input in every net); any other block behind
          its context;
        - "context" (res, channels): the context alone;
        - "network" (arch): a whole net.
        """
        if kind == "block":
            (spec,) = args
            example = torch.zeros(spec.input_shape())
            if spec.kind == "stem":
                return spec.key, spec.build, example
            return (f"in-context:{spec.key}", lambda: torch.nn.Sequential(context_module(spec.cin), spec.build()),
                    example)
        if kind == "context":
            res, channels = args
            return context_key(res, channels), lambda: context_module(channels), torch.zeros(1, channels, res, res)
        if kind == "network":
            (arch,) = args
            return ("net:" + arch.to_json(), lambda: FaceNet(arch),
                    torch.zeros(1, 3, arch.input_size, arch.input_size))
        raise ValueError(f"unknown model file kind {kind!r}")

    def convert(self, kind: str, *args) -> Path:
        """The file of `kind` (see `_recipe`), converted now unless cached."""
        identity, build, example = self._recipe(kind, *args)
        path = self._file(identity)
        if not path.is_file():
            torch.manual_seed(_seed_for(identity))  # deterministic weights: same file for the same block
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.stem}.{os.getpid()}.partial{path.suffix}")
            try:
                convert_for_runtime(build().eval(), example, self.runtime, self.dtype, partial)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        return path

    def block(self, spec: BlockSpec) -> Path:
        return self.convert("block", spec)

    def network(self, arch: Arch) -> Path:
        return self.convert("network", arch)

    def files(self, requests: dict[str, tuple], pool: ConversionPool | None = None,
              done: Callable[[str], None] = lambda key: None) -> dict[str, Path]:
        """Files for many requests (key -> (kind, *args), see `_recipe`), in `requests`' order; those not cached
        yet are converted in `pool` when given (or waited for, where the pool converts them already). `done(key)`
        is called as each file is ready."""
        paths, pending = {}, {}
        for key, (kind, *args) in requests.items():
            path = self.path(kind, *args)
            if path.is_file() or pool is None:
                paths[key] = path if path.is_file() else self.convert(kind, *args)
                done(key)
            else:  # two keys may ask for one file: the pool converts it once
                pending.setdefault(pool.submit(self, kind, tuple(args)), []).append(key)
        for future in as_completed(pending):
            for key in pending[future]:
                paths[key] = future.result()
                done(key)
        return {key: paths[key] for key in requests}
