"""`run_export`: load the model, write each requested artifact, check it on real faces and on the device, and
write `export_report.{json,md}`."""

from __future__ import annotations

import datetime
import importlib.metadata
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefr.errors import EdgefrError
from edgefr.export.artifacts import (
    RUNTIME,
    SUFFIX,
    ExportTarget,
    artifact_bytes,
    exported_metadata,
    load_artifact_embedder,
    write_artifact,
)
from edgefr.export.checks import (
    Check,
    embedding_agreement,
    latency_calls,
    latency_check,
    lfw_drop,
    predicted_latency,
)
from edgefr.export.graph import graph_summary
from edgefr.export.recipes import load_tolerances, recipe_path
from edgefr.paths import shared_dir

REPORT_SCHEMA = "edgefr.export-report/1"
CHECKPOINT_SUFFIXES = (".pt", ".pth")
# The device a format is checked on when --device is not given: this host, the dtype of the profile flow.
DEFAULT_DEVICES = {("onnx", "fp32"): "host-ort", ("onnx", "int8"): "host-ort-int8",
                   ("tflite", "fp32"): "host-tflite", ("tflite", "int8"): "host-tflite-int8"}
NO_DEVICE = "none"


@dataclass
class ExportOptions:
    model: str
    targets: list[ExportTarget]
    out: Path
    calib: Path | None = None
    calib_images: int = 200
    faces: Path | None = None
    agreement_faces: int = 100
    pairs: Path | None = None
    pairs_limit: int | None = None
    device: str | None = None
    recipes: Path | None = None
    skipped: list[str] = field(default_factory=list)
    stem: str = ""  # artifact file names: <stem>-<quantize>.<suffix>; the model's name unless set


def load_model(spec: str):
    """(model in eval mode, description): an edgefr checkpoint, or an architecture name / arch JSON (untrained)."""
    from edgefr.space import count_params, create_model, load_student

    path = Path(spec)
    if path.suffix in CHECKPOINT_SUFFIXES or (path.is_file() and path.suffix != ".json"):
        model, _ = load_student(path)
        kind, name = "checkpoint", path.stem
    else:
        model, kind, name = create_model(spec).eval(), "architecture (untrained weights)", None
    return model, {"source": spec, "kind": kind, "name": name or model.arch.name, "arch": model.arch.name,
                   "arch_json": model.arch.to_dict(),
                   "embedding_dim": model.embedding_dim, "params": count_params(model)}


def face_files(folder: Path, count: int, purpose: str) -> list[Path]:
    """`count` image files spread evenly over `folder` (nested or flat), in a stable order."""
    from edgefr.data.faces import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise EdgefrError(f"{folder}: no such folder of faces for {purpose}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise EdgefrError(f"{folder}: no face images ({'/'.join(IMAGE_EXTENSIONS)}) for {purpose}; expected "
                          "aligned 112x112 face crops, e.g. ../shared/faces/celeba")
    picks = np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)
    return [files[i] for i in dict.fromkeys(picks)]


def load_faces(paths: list[Path], size: int) -> np.ndarray:
    from edgefr.data.faces import load_rgb, to_face_size

    return np.stack([to_face_size(load_rgb(p), p, size) for p in paths])


def calibration_batches(folder: Path, count: int, preprocessing: dict) -> list[np.ndarray]:
    """Single-image NCHW batches (the exported graphs have batch 1), preprocessed exactly as the model's input."""
    from edgefr.teachers.preprocessing import preprocess

    images = load_faces(face_files(folder, count, "int8 calibration"), preprocessing["size"])
    batch = preprocess(images, {**preprocessing, "layout": "NCHW"})
    return [batch[i:i + 1] for i in range(len(batch))]


def lfw_pairs(pairs_txt: Path, limit: int | None):
    """LFW pairs; with `limit`, the first limit/20 same and different pairs of each fold (10 folds kept)."""
    from edgefr.data.pairs import PairSet, read_lfw_pairs

    pairs = read_lfw_pairs(pairs_txt, pairs_txt.parent)
    if not limit or limit >= len(pairs):
        return pairs
    per_kind = max(1, math.ceil(limit / 20))
    keep = np.concatenate([np.flatnonzero((pairs.fold == f) & (pairs.same == s))[:per_kind]
                           for f in np.unique(pairs.fold) for s in (True, False)])
    return PairSet([pairs.left[i] for i in keep], [pairs.right[i] for i in keep], pairs.same[keep],
                   pairs.fold[keep], name=f"{pairs.name}-{len(keep)}")


def export_device(options: ExportOptions, target: ExportTarget):
    """The device that measures this export's latency (None: not measurable here, e.g. Core ML)."""
    from edgefr.devices import resolve_device

    if options.device == NO_DEVICE or target.format not in RUNTIME:
        return None
    if options.device:
        device = resolve_device(options.device)
        if device.runtime == RUNTIME[target.format]:
            return device
        if len({t.format for t in options.targets}) == 1:
            raise EdgefrError(f"--device {options.device} runs {device.runtime}; --format {target.format} needs a "
                              f"{RUNTIME[target.format]} device")
    flow_dtype = "int8" if target.quantize == "int8" else "fp32"
    return resolve_device(DEFAULT_DEVICES[target.format, flow_dtype])


def converter_versions() -> dict[str, str]:
    from edgefr.latency.models import converter_versions as flow_versions

    return flow_versions(extra=("ai-edge-quantizer", "coremltools"))


class _Reference:
    """The PyTorch fp32 model's embeddings of the agreement faces and its LFW result, computed once."""

    def __init__(self, model, options: ExportOptions, log: Callable[[str], None]):
        from edgefr.distill.embedder import ModuleEmbedder
        from edgefr.verify import verify_pairs

        self.embedder = ModuleEmbedder(model, "pytorch-fp32")
        self.notes: list[str] = []
        faces_folder = options.faces or shared_dir() / "faces" / "lfw"
        self.faces = None
        if options.faces or faces_folder.is_dir():
            self.faces = load_faces(face_files(faces_folder, options.agreement_faces, "embedding agreement"),
                                    model.preprocessing["size"])
            self.embeddings = self.embedder.embed(self.faces)
        else:
            self.notes.append(f"embedding agreement not checked: no faces at {faces_folder} (pass --faces DIR)")
        pairs_txt = options.pairs or shared_dir() / "faces" / "lfw" / "pairs.txt"
        self.pairs = self.lfw = None
        if options.pairs or pairs_txt.is_file():
            self.pairs = lfw_pairs(pairs_txt, options.pairs_limit)
            log(f"PyTorch fp32 reference on {len(self.pairs)} LFW pairs ...")
            self.lfw = verify_pairs(self.embedder, self.pairs, progress=False)
        else:
            self.notes.append(f"LFW drop not checked: no pairs at {pairs_txt} (pass --pairs PAIRS.txt)")


def _export_one(model, arch, target: ExportTarget, options: ExportOptions, reference: _Reference,
                calibration, log: Callable[[str], None]) -> dict:
    from edgefr.digests import file_sha256
    from edgefr.verify import verify_pairs

    tolerances = load_tolerances(target.format, target.quantize, recipe_path(target.format, options.recipes))
    path = options.out / f"{options.stem}-{target.variant}{SUFFIX[target.format]}"
    log(f"{target.label}: writing {path} ...")
    write_artifact(model, target, path, calibration)
    entry = {"format": target.format, "quantize": target.quantize, "float_head": target.float_head,
             "file": str(path), "bytes": artifact_bytes(path),
             "sha256": file_sha256(path) if path.is_file() else None, "recipe": tolerances.source,
             "metadata": exported_metadata(model, target)}
    graph = graph_summary(path, target.format, target.quantize)
    entry["graph"] = {"ops": graph.ops, "float_ops": graph.float_ops, "float_tail_ops": graph.float_tail_ops,
                      "non_delegated_ops": graph.non_delegated_ops, "notes": graph.notes}
    entry["warnings"] = graph.warnings(target.label, target.float_head)
    embedder = load_artifact_embedder(path)
    checks: list[Check] = []
    if reference.faces is not None:
        checks += embedding_agreement(reference.embeddings, embedder.embed(reference.faces), tolerances)
    if reference.lfw is not None:
        log(f"{target.label}: LFW on {len(reference.pairs)} pairs ...")
        exported = verify_pairs(embedder, reference.pairs, progress=False)
        checks.append(lfw_drop(reference.lfw, exported, reference.pairs, tolerances))
        entry["lfw_accuracy"] = exported.accuracy
    device = export_device(options, target)
    entry["device"] = device.summary() if device else None
    if device is not None:
        log(f"{target.label}: measuring on {device.name} ...")
        predicted, note = predicted_latency(device, arch, target.profiled_dtype)
        calls = latency_calls(device, path, target.label, predicted, tolerances)
        measured = min(calls)
        entry["latency"] = {"measured_ms": measured, "calls_ms": calls, "predicted_ms": predicted, "note": note}
        checks.append(latency_check(measured, predicted, note, tolerances))
    else:
        entry["latency"] = {"measured_ms": None, "predicted_ms": None,
                            "note": "not measured: Core ML runs on Apple devices only" if target.format == "coreml"
                            else "not measured (--device none)"}
    entry["checks"] = [c.to_dict() for c in checks]
    entry["failures"] = [f"{target.label} {c.failure()}" for c in checks if c.passed is False]
    if target.format == "coreml":
        entry["warnings"].append(f"{target.label}: checked by executing the mlprogram with torch on Linux; fp16 "
                                 "compute is emulated, final numbers need an Apple device")
    for warning in entry["warnings"]:
        log(f"warning: {warning}")
    return entry


def run_export(options: ExportOptions, log: Callable[[str], None] = lambda _: None) -> dict:
    """Export and check every target; writes the artifacts and export_report.{json,md} into `options.out`."""
    from edgefr.export.report import write_report

    model, description = load_model(options.model)
    options.stem = options.stem or description["name"]
    for target in options.targets:  # fail on a broken recipe before minutes of conversion
        load_tolerances(target.format, target.quantize, recipe_path(target.format, options.recipes))
    calibration = None
    if any(t.quantize == "int8" for t in options.targets):
        folder = options.calib or shared_dir() / "faces" / "celeba"
        calibration = calibration_batches(folder, options.calib_images, model.preprocessing)
        log(f"calibration: {len(calibration)} faces from {folder}")
    reference = _Reference(model, options, log)
    exports = [_export_one(model, model.arch, target, options, reference, calibration, log)
               for target in options.targets]
    report = {
        "schema": REPORT_SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "edgefr": importlib.metadata.version("edgefr"),
        "model": description,
        "preprocessing": model.preprocessing,
        "calibration": {"folder": str(options.calib or shared_dir() / "faces" / "celeba"),
                        "images": len(calibration)} if calibration else None,
        "reference": {"lfw_accuracy": reference.lfw.accuracy, "lfw_std": reference.lfw.accuracy_std,
                      "pairs": len(reference.pairs)} if reference.lfw else None,
        "converters": converter_versions(),
        "exports": exports,
        "skipped": options.skipped,
        "notes": reference.notes,
        "failures": [f for entry in exports for f in entry["failures"]],
    }
    report["passed"] = not report["failures"]
    write_report(report, options.out)
    return report
