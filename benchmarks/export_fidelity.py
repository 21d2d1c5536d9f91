"""Export fidelity: every format x quantization of one model, against the PyTorch fp32 model, on this host.

    python benchmarks/export_fidelity.py runs/s10/student.pt [--pairs-limit 6000] [--faces 200] [--calib-images 200]

Prints per export: file size, cosine to the PyTorch fp32 embedding (mean/min over real LFW faces), LFW 10-fold
accuracy and its drop at the PyTorch model's thresholds (+- its standard error, as `edgefr export` checks it),
latency measured on this host (the runtime's local device: one thread, thread CPU time) and the speedup over the
same format's fp32 file. Core ML runs through the torch MIL emulator (no latency).
Targets: fp32 cosine >= 0.9999; int8 TFLite / ONNX LFW drop <= 0.3 pp and >= 2x faster than fp32.
An untrained architecture name works too (accuracy columns are then meaningless; int8 calibration of an untrained
net collapses its tiny embeddings).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from edgefr.devices import resolve_device
from edgefr.distill.embedder import ModuleEmbedder
from edgefr.export.artifacts import (
    FORMATS,
    QUANTIZATIONS,
    SUFFIX,
    artifact_bytes,
    check_target,
    load_artifact_embedder,
    write_artifact,
)
from edgefr.export.checks import measured_latency
from edgefr.export.pipeline import (
    DEFAULT_DEVICES,
    calibration_batches,
    face_files,
    lfw_pairs,
    load_faces,
    load_model,
)
from edgefr.paths import shared_dir
from edgefr.teachers.base import l2_normalize
from edgefr.verify import paired_accuracy_drop, verify_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="student checkpoint .pt (or an architecture name: untrained)")
    parser.add_argument("--pairs-limit", type=int, default=6000)
    parser.add_argument("--faces", type=int, default=200, help="LFW faces for the cosine columns")
    parser.add_argument("--calib-images", type=int, default=200)
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args()

    model, description = load_model(args.model)
    lfw = shared_dir() / "faces" / "lfw"
    faces = load_faces(face_files(lfw, args.faces, "cosine"), model.preprocessing["size"])
    pairs = lfw_pairs(lfw / "pairs.txt", args.pairs_limit)
    calibration = calibration_batches(shared_dir() / "faces" / "celeba", args.calib_images, model.preprocessing)
    reference = ModuleEmbedder(model, "pytorch-fp32")
    reference_faces = l2_normalize(reference.embed(faces))
    reference_lfw = verify_pairs(reference, pairs, progress=False)
    print(f"{description['source']} ({description['kind']}, {description['params']:,} params); PyTorch fp32 LFW "
          f"{100 * reference_lfw.accuracy:.2f}% on {len(pairs)} pairs; cosine on {len(faces)} faces; latency: this "
          "host, 1 thread, thread CPU time")
    print(f"{'export':22s} {'size MB':>8s} {'cos mean':>9s} {'cos min':>8s} {'LFW %':>7s} {'drop pp':>14s} "
          f"{'ms':>7s} {'speedup':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            fp32_ms = None
            targets = [check_target(fmt, quantize) for quantize in QUANTIZATIONS[fmt]]
            # int8 exports keep a float head by default; the whole-int8 graph shows what that buys.
            targets += [check_target(fmt, "int8", float_head=False) for t in targets if t.float_head]
            for target in targets:
                path = write_artifact(model, target, Path(tmp) / f"{target.label}{SUFFIX[fmt]}", calibration)
                embedder = load_artifact_embedder(path)
                cosine = np.sum(reference_faces * l2_normalize(embedder.embed(faces)), axis=1)
                exported = verify_pairs(embedder, pairs, progress=False)
                drop, error = paired_accuracy_drop(reference_lfw.similarities, exported.similarities, pairs.same,
                                                   pairs.fold)
                ms = speedup = None
                if (fmt, "fp32") in DEFAULT_DEVICES:
                    ms = measured_latency(resolve_device(DEFAULT_DEVICES[fmt, "fp32"]), path, target.label)
                    fp32_ms = fp32_ms or ms
                    speedup = fp32_ms / ms
                print(f"{target.label:22s} {artifact_bytes(path) / 1e6:8.3f} {cosine.mean():9.5f} {cosine.min():8.5f} "
                      f"{100 * exported.accuracy:7.2f} {f'{100 * drop:+.2f} +- {100 * error:.2f}':>14s} "
                      f"{'-' if ms is None else f'{ms:.3f}':>7s} {'-' if speedup is None else f'{speedup:.2f}x':>8s}",
                      flush=True)


if __name__ == "__main__":
    main()
