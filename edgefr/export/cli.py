"""`edgefr export`: quantize, export and check a student on the device."""

from __future__ import annotations

from pathlib import Path

import click

from edgefr.export.artifacts import FORMATS, QUANTIZATIONS

ALL_QUANTIZATIONS = tuple(dict.fromkeys(q for fmt in FORMATS for q in QUANTIZATIONS[fmt]))


@click.command("export")
@click.option("--model", "model_spec", required=True,
              help="Student checkpoint .pt, or a registered architecture name / arch JSON (untrained weights).")
@click.option("--format", "fmt", default="tflite", show_default=True, help=f"{', '.join(FORMATS)} or all.")
@click.option("--quantize", default="fp32", show_default=True,
              help=f"{', '.join(ALL_QUANTIZATIONS)} (see export/<format>.toml for which format has which).")
@click.option("--float-head/--int8-head", default=None,
              help="With --quantize int8 (onnx, tflite): keep the embedding head after the global depthwise conv "
                   "in float32 (the default there) or quantize it too.")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Aligned faces for int8 calibration [../shared/faces/celeba].")
@click.option("--calib-images", default=200, show_default=True, help="Calibration faces (spread over the folder).")
@click.option("--device", "device_spec", default=None,
              help="Device that measures latency (name, .toml, ssh://, adb:) [this host, per format]; 'none' skips.")
@click.option("--faces", type=click.Path(path_type=Path), default=None,
              help="Faces for the embedding agreement check [../shared/faces/lfw].")
@click.option("--agreement-faces", default=100, show_default=True, help="Faces compared with the PyTorch model.")
@click.option("--pairs", type=click.Path(path_type=Path), default=None,
              help="LFW-format pairs.txt for the accuracy check [../shared/faces/lfw/pairs.txt].")
@click.option("--pairs-limit", type=int, default=None, help="Check on this many pairs (10 folds kept) [all 6000].")
@click.option("--recipes", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of <format>.toml tolerance recipes [export/].")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("export/out"),
              show_default=True, help="Folder for the model file(s) and export_report.{json,md}.")
def export_command(model_spec, fmt, quantize, float_head, calib, calib_images, device_spec, faces, agreement_faces,
                   pairs, pairs_limit, recipes, out) -> None:
    """Quantize and export a model, then check the exported file itself.

    \b
    Checks (tolerances per format and quantization in export/<format>.toml):
      embedding agreement with the PyTorch fp32 model on real faces (mean and min cosine),
      LFW 10-fold accuracy drop, measured latency on the device vs its latency-table prediction,
      size, op list, ops left in float or not delegated to XNNPACK (warnings).
    A failed check exits non-zero naming the check and by how much; the report is written either way.
    """
    from edgefr.errors import EdgefrError
    from edgefr.export.artifacts import check_target
    from edgefr.export.pipeline import ExportOptions, run_export

    if fmt == "all":
        formats = [f for f in FORMATS if quantize in QUANTIZATIONS[f]]
        if not formats:
            raise EdgefrError(f"no format supports --quantize {quantize}; "
                              f"expected one of {', '.join(ALL_QUANTIZATIONS)}")
        skipped = [f"{f}: no {quantize} flow" for f in FORMATS if f not in formats]
    else:
        formats, skipped = [fmt], []
    targets = [check_target(f, quantize, float_head) for f in formats]
    options = ExportOptions(model=model_spec, targets=targets, out=out, calib=calib, calib_images=calib_images,
                            faces=faces, agreement_faces=agreement_faces, pairs=pairs, pairs_limit=pairs_limit,
                            device=device_spec, recipes=recipes, skipped=skipped)
    report = run_export(options, log=click.echo)
    for entry in report["exports"]:
        click.echo(f"wrote {entry['file']} ({entry['bytes'] / 1e6:.2f} MB)")
    click.echo(f"report: {out / 'export_report.md'}")
    if report["failures"]:
        raise EdgefrError(f"export check failed: {'; '.join(report['failures'])} (see {out / 'export_report.md'})")
