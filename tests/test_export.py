"""`edgefr export`: every format x quantization loads and runs in its runtime, fp32 agrees with PyTorch on real
faces, metadata carries the preprocessing into `edgefr eval`, failed checks and bad input are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgefr.errors import EdgefrError
from edgefr.export.artifacts import (
    QUANTIZATIONS,
    SUFFIX,
    ExportTarget,
    check_target,
    load_artifact_embedder,
    write_artifact,
)
from edgefr.export.checks import Check, embedding_agreement
from edgefr.export.graph import graph_summary
from edgefr.export.pipeline import (
    ExportOptions,
    calibration_batches,
    load_faces,
    run_export,
)
from edgefr.export.recipes import Tolerances, load_tolerances
from edgefr.teachers.base import l2_normalize
from tests.conftest import needs_lfw
from tests.support import assert_one_line_error, run_edgefr

SMALL_ARCH = "mobilefacenet_w050_d050_relu"


@pytest.fixture(scope="module")
def faces(real_faces) -> np.ndarray:
    return load_faces(real_faces, 112)


@pytest.fixture(scope="module")
def conditioned_model(small_imagefolder):
    """The small architecture with BatchNorm statistics re-estimated on real faces: untrained weights, but
    unit-scale activations like a trained net's (fresh BN statistics leave embeddings ~1e-7, which int8 and
    fp16 round to nothing)."""
    from edgefr.space import create_model

    torch.manual_seed(0)
    model = create_model(SMALL_ARCH)
    batch = torch.from_numpy(np.concatenate(calibration_batches(small_imagefolder, 30, model.preprocessing)))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches seen
    with torch.no_grad():
        model.train()(batch)
    return model.eval()


def _cosines(model, embedder, faces) -> np.ndarray:
    from edgefr.distill.embedder import ModuleEmbedder

    reference = l2_normalize(ModuleEmbedder(model, "reference").embed(faces))
    return np.sum(reference * l2_normalize(embedder.embed(faces)), axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "tflite", "coreml"])
def test_every_quantization_of_a_format_loads_and_runs_in_its_runtime(fmt, conditioned_model, faces,
                                                                         small_imagefolder, tmp_path):
    calibration = calibration_batches(small_imagefolder, 16, conditioned_model.preprocessing)
    for quantize in QUANTIZATIONS[fmt]:
        target = ExportTarget(fmt, quantize)
        path = write_artifact(conditioned_model, target, tmp_path / f"{target.label}{SUFFIX[fmt]}", calibration)
        assert path.exists() and not list(tmp_path.glob(".export-*")), "staging left behind"
        graph = graph_summary(path, fmt, quantize)
        assert graph.ops and not graph.non_delegated_ops, (target, graph)
        embedder = load_artifact_embedder(path)  # preprocessing from the file's own metadata
        assert embedder.preprocessing["layout"] == ("NHWC" if fmt == "tflite" else "NCHW")
        cosine = _cosines(conditioned_model, embedder, faces)
        # Untrained weights amplify rounding more than trained ones; these floors only catch a broken artifact
        # (wrong layout, preprocessing or weights give cosines near 0). Trained-model tolerances: export/*.toml.
        floor = {"fp32": 0.9999, "fp16": 0.99}.get(quantize, 0.7)
        assert cosine.min() >= floor, (target, cosine)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,head_op", [("onnx", "Gemm"), ("tflite", "FULLY_CONNECTED")])
def test_float_head_keeps_the_embedding_head_float_in_an_int8_export(fmt, head_op, conditioned_model, faces,
                                                                      small_imagefolder, tmp_path):
    calibration = calibration_batches(small_imagefolder, 16, conditioned_model.preprocessing)
    float_ops, cosines, graphs = {}, {}, {}
    for float_head in (False, True):
        target = ExportTarget(fmt, "int8", float_head)
        path = write_artifact(conditioned_model, target, tmp_path / f"{target.label}{SUFFIX[fmt]}", calibration)
        graphs[float_head] = graph_summary(path, fmt, "int8")
        float_ops[float_head] = graphs[float_head].float_ops
        cosines[float_head] = _cosines(conditioned_model, load_artifact_embedder(path), faces)
    assert head_op not in float_ops[False] and float_ops[True].get(head_op) == 1, float_ops
    # The head is the graph's float tail: asked for, so not warned about, while float ops before it still are
    # (TFLite keeps some residual ADDs float); read as a whole-int8 graph, the same float head is warned about.
    head = graphs[True]
    assert head.float_tail_ops.get(head_op) == 1, head
    assert head_op not in " ".join(head.warnings("x", float_head=True)), head.warnings("x", True)
    assert head_op in " ".join(head.warnings("x", float_head=False)), head.warnings("x", False)
    if fmt == "onnx":  # how to run it exactly on x86 without VNNI (test_onnx_runtime_sessions_multiply_int8_exactly)
        assert any("session.x64quantprecision=1" in note for note in head.notes), head.notes
    # The head's rounding is gone (on a distilled student: mean cosine 0.978 -> 0.997 ONNX, 0.979 -> 0.998 TFLite).
    assert cosines[True].mean() > cosines[False].mean() and cosines[True].min() >= 0.7, cosines
    # Only the head changed precision: the body's convolutions are int8 in both.
    assert set(float_ops[True]) - set(float_ops[False]) <= {head_op, "Conv", "DEPTHWISE_CONV_2D", "MatMul",
                                                            "Mul", "Add", "MUL", "ADD", "Flatten", "Reshape"}


def test_onnx_runtime_sessions_multiply_int8_exactly(tmp_path):
    """x86 CPUs without VNNI sum u8 x s8 product pairs in saturating 16 bits (VPMADDUBSW): 255 x 127, twice, is
    64770 > 32767, and ONNX Runtime's default kernels there return half of this product. The sessions edgefr opens
    (measurement, export checks) must compute it exactly, as the export report tells deployments to."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgefr.devices.agent import ort_session_options

    depth, width = 64, 8
    weights = numpy_helper.from_array(np.full((depth, width), 127, np.int8), "weights")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["activations", "weights"], ["products"])], "g",
                              [helper.make_tensor_value_info("activations", TensorProto.UINT8, [4, depth])],
                              [helper.make_tensor_value_info("products", TensorProto.INT32, [4, width])], [weights])
    path = tmp_path / "products.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    activations = np.full((4, depth), 255, np.uint8)
    for options in (ort_session_options(), ort_session_options(threads=1)):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        products = session.run(None, {"activations": activations})[0]
        assert (products == 255 * 127 * depth).all(), products[0]


def test_onnx_exports_reuse_one_registry_and_write_the_files_a_fresh_registry_writes(tmp_path, monkeypatch):
    """Exports after the first reuse the exporter's registry of decompositions (half a block's conversion time);
    the files must be byte for byte those an export building its own registry writes, for every block kind."""
    import contextlib

    from edgefr.convert import convert_for_runtime, onnx_flow
    from edgefr.space import MFN_SPACE

    by_kind = {}
    for spec in MFN_SPACE.all_block_specs():
        by_kind.setdefault((spec.kind, spec.act), spec)
    assert len(by_kind) >= 4, by_kind

    def convert_all(folder) -> list[bytes]:
        files = []
        for index, spec in enumerate(by_kind.values()):
            torch.manual_seed(index)
            path = tmp_path / folder / f"{index}.onnx"
            convert_for_runtime(spec.build().eval(), torch.zeros(spec.input_shape()), "onnxruntime", "fp32", path)
            files.append(path.read_bytes())
        return files

    builds_before = onnx_flow._shared_torchlib_registry.cache_info()
    reused = convert_all("reused")
    builds_after = onnx_flow._shared_torchlib_registry.cache_info()
    assert builds_after.hits - builds_before.hits >= len(by_kind) - 1, (builds_before, builds_after)
    monkeypatch.setattr(onnx_flow, "torchlib_registry_built_once", contextlib.nullcontext)
    assert convert_all("fresh") == reused


def test_float_head_is_the_int8_default_and_refused_where_it_means_nothing():
    for fmt, quantize in (("onnx", "fp32"), ("coreml", "fp16"), ("tflite", "int8-weights")):
        with pytest.raises(EdgefrError, match="--float-head applies to --quantize int8"):
            check_target(fmt, quantize, float_head=True)
        assert not check_target(fmt, quantize).float_head
    assert check_target("tflite", "int8").label == "tflite-int8-float-head"
    assert check_target("onnx", "int8").label == "onnx-int8-float-head"
    assert check_target("onnx", "int8", float_head=False).label == "onnx-int8"


@pytest.mark.slow
def test_coreml_emulator_runs_compressed_weights(conditioned_model, tmp_path):
    from edgefr.export.coreml_mil import MilExecutor, load_mil_program

    path = write_artifact(conditioned_model, ExportTarget("coreml", "int8-weights"), tmp_path / "m.mlpackage", None)
    program, metadata = load_mil_program(path)
    ops = MilExecutor(program).op_counts()
    assert ops["constexpr_affine_dequantize"] > 0 and ops["conv"] > 0
    assert json.loads(metadata["edgefr.model"])["embedding_dim"] == conditioned_model.embedding_dim


@needs_lfw
@pytest.mark.slow
def test_cli_export_writes_report_fails_a_tight_check_and_eval_reads_the_metadata(tmp_path, small_imagefolder):
    from edgefr.verify import read_tflite_metadata

    strict = tmp_path / "recipes"
    strict.mkdir()
    (strict / "tflite.toml").write_text("[fp32]\nmin_mean_cosine = 1.01\nmax_lfw_drop_pp = 0.1\n")
    out = tmp_path / "out"
    result = run_edgefr("export", "--model", SMALL_ARCH, "--format", "tflite", "--pairs-limit", "40",
                        "--agreement-faces", "8", "--device", "none", "--recipes", str(strict), "--out", str(out))
    # Native converter/runtime libraries log to the process's stderr before it; the error itself is one line.
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: export check failed: tflite-fp32 mean_cosine") and "< 1.01 (by " in last, last
    report = json.loads((out / "export_report.json").read_text())
    assert report["schema"] == "edgefr.export-report/1" and report["passed"] is False
    (entry,) = report["exports"]
    assert {c["name"]: c["passed"] for c in entry["checks"]} == {"mean_cosine": False, "min_cosine": None,
                                                                 "lfw_drop_pp": True}
    written = (out / "export_report.md").read_text()
    assert "| tflite fp32 |" in written
    drop = next(c for c in entry["checks"] if c["name"] == "lfw_drop_pp")
    line = next(text for text in written.splitlines() if text.startswith("- lfw_drop_pp:"))
    assert "(<= 0.1" in line and ("sampling error" in line) == (drop["allowance"] > 0), line
    # A report written before checks had allowances still renders, without one.
    from edgefr.export.report import markdown

    for check in entry["checks"]:
        del check["allowance"]
    old_line = next(text for text in markdown(report).splitlines() if text.startswith("- lfw_drop_pp:"))
    assert "(<= 0.1) pass" in old_line, old_line

    exported = Path(entry["file"])
    declared = json.loads(read_tflite_metadata(exported)["edgefr.preprocessing"])
    assert declared == {"channel_order": "RGB", "mean": 127.5, "std": 128.0, "layout": "NHWC", "size": 112}
    evaluated = run_edgefr("eval", "--model", str(exported), "--imagefolder", str(small_imagefolder),
                           "--n-pairs", "40", "--json", str(tmp_path / "eval.json"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["n_pairs"] > 0


@pytest.mark.slow
@needs_lfw
def test_int8_exports_of_a_distilled_student_pass_their_recipes(distilled_student, tmp_path):
    # All 6000 LFW pairs: the recipes allow a 0.3 pp drop plus two standard errors, 0.4-0.5 pp for this 66-69%
    # student, whose re-fitted 10-fold accuracy moved by +-0.6 pp with the calibration faces alone. The int8 a user
    # gets by default: float head. On an AVX2 host without VNNI the ONNX one lost 0.9 pp (cosine 0.992) until
    # sessions set exact int8 products, then 0.10 pp (cosine 0.998).
    options = ExportOptions(model=str(distilled_student.best_path),
                            targets=[check_target("onnx", "int8"), check_target("tflite", "int8")],
                            out=tmp_path, calib_images=100, agreement_faces=50, device="none")
    report = run_export(options)
    assert report["passed"], report["failures"]
    drops = [c for entry in report["exports"] for c in entry["checks"] if c["name"] == "lfw_drop_pp"]
    assert len(drops) == 2 and all(0 < c["allowance"] < 0.7 for c in drops), drops


def test_tolerance_checks_and_their_failure_message():
    tolerances = Tolerances(min_mean_cosine=0.98, min_min_cosine=0.9)
    reference = np.eye(4, dtype=np.float32)
    mean, minimum = embedding_agreement(reference, reference + 0.05 * np.roll(reference, 1, axis=1), tolerances)
    assert mean.passed and minimum.passed
    mean, minimum = embedding_agreement(reference, reference + np.roll(reference, 1, axis=1), tolerances)
    assert mean.passed is False and mean.failure() == "mean_cosine 0.7071 < 0.98 (by 0.2729)"
    drop = Check("lfw_drop_pp", 0.5, 0.3, "max", unit=" pp")
    assert drop.passed is False and drop.failure() == "lfw_drop_pp 0.5 pp > 0.3 pp (by 0.2 pp)"
    # A value with a known sampling error fails only beyond it.
    assert Check("lfw_drop_pp", 0.6, 0.3, "max", unit=" pp", allowance=0.4).passed is True
    noisy = Check("lfw_drop_pp", 0.9, 0.3, "max", unit=" pp", allowance=0.4)
    assert noisy.passed is False
    assert noisy.failure() == "lfw_drop_pp 0.9 pp > 0.3 pp + 0.4 pp sampling error (by 0.2 pp)"
    assert Check("latency_error_pct", None, 15, "max").passed is None  # no prediction: reported, not checked


def test_a_latency_over_its_tolerance_is_measured_again_later_and_the_faster_call_counts(monkeypatch):
    # A slow spell of a shared host slows the nets of one call by 7-29% (README, *Meeting the budget,
    # measured*): a first call over the tolerance is measured again CONFIRM_AFTER_S later; one under the
    # prediction is not (a spell only adds time), nor one within the tolerance.
    from edgefr.export import checks

    tolerances = Tolerances(max_latency_error_pct=15)
    for first, expected_calls in ((1.3, [1.3, 1.02]), (1.1, [1.1]), (0.7, [0.7])):
        times, sleeps = iter([first, 1.02]), []
        monkeypatch.setattr(checks, "measured_latency", lambda device, path, label: next(times))
        monkeypatch.setattr(checks.time, "sleep", sleeps.append)
        calls = checks.latency_calls("device", Path("net.tflite"), "net", 1.0, tolerances)
        assert calls == expected_calls
        assert sleeps == ([checks.CONFIRM_AFTER_S] if len(calls) == 2 else [])
        check = checks.latency_check(min(calls), 1.0, "table", tolerances)
        assert check.passed is (first != 0.7), (first, check)


def test_shipped_recipes_cover_every_quantization():
    for fmt, quantizations in QUANTIZATIONS.items():
        for quantize in quantizations:
            assert load_tolerances(fmt, quantize).min_mean_cosine is not None, (fmt, quantize)


def test_broken_recipe_is_a_one_line_error(tmp_path):
    (tmp_path / "onnx.toml").write_text("[fp32]\nmin_cosine_mean = 0.9\n")
    with pytest.raises(EdgefrError, match="unknown keys"):
        load_tolerances("onnx", "fp32", tmp_path / "onnx.toml")
    with pytest.raises(EdgefrError, match=r"no \[int8\] table"):
        load_tolerances("onnx", "int8", tmp_path / "onnx.toml")


def test_bad_input_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_edgefr("export", "--model", SMALL_ARCH, "--format", "pb"),
                          "unknown export format", "'pb'")
    assert_one_line_error(run_edgefr("export", "--model", SMALL_ARCH, "--format", "onnx", "--quantize", "fp16"),
                          "--format onnx does not support --quantize fp16")
    not_a_checkpoint = tmp_path / "student.pt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    assert_one_line_error(run_edgefr("export", "--model", str(not_a_checkpoint)), str(not_a_checkpoint),
                          "not an edgefr checkpoint")
    no_faces = tmp_path / "calib"
    (no_faces / "person").mkdir(parents=True)
    (no_faces / "person" / "notes.txt").write_text("no faces here")
    out = tmp_path / "out"
    assert_one_line_error(run_edgefr("export", "--model", SMALL_ARCH, "--quantize", "int8", "--calib", str(no_faces),
                                     "--out", str(out)), str(no_faces), "no face images")
    assert not out.exists()


def test_an_op_the_converter_rejects_is_named_and_leaves_no_file(tmp_path):
    from edgefr.convert import export_coreml

    class Spectral(torch.nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).real

    with pytest.raises(EdgefrError, match="fft_fft2") as error:
        export_coreml(Spectral(), torch.zeros(1, 3, 8, 8), tmp_path / "spectral.mlpackage")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []
