"""Teachers: preprocessing specs, loading every kind of model, ensembles and the embedding cache."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lfw_subset, needs_lfw

from edgefr.data.faces import ImageFolderFaces, load_rgb
from edgefr.errors import EdgefrError
from edgefr.space import create_model, save_student
from edgefr.teachers import (
    INSIGHTFACE_PREPROCESSING,
    SFACE_PREPROCESSING,
    cached_embeddings,
    check_preprocessing,
    load_teacher,
    preprocess,
)

TINY_ARCH = "mobilefacenet_w050_d050_relu"


@pytest.mark.parametrize("change, complaint", [
    ({"channel_order": "XYZ"}, "channel_order"),
    ({"layout": "CHWN"}, "layout"),
    ({"std": 0}, "non-zero"),
    ({"mean": [1, 2]}, "3 numbers"),
    ({"size": "112"}, "size"),
    ({"scale": 1}, "unknown scale"),
])
def test_malformed_preprocessing_is_a_one_line_error(change, complaint):
    with pytest.raises(EdgefrError, match=complaint) as exc:
        check_preprocessing({**INSIGHTFACE_PREPROCESSING, **change}, "spec")
    assert "\n" not in str(exc.value)
    with pytest.raises(EdgefrError, match="not valid JSON"):
        check_preprocessing("{channel_order: RGB", "spec")
    with pytest.raises(EdgefrError, match="missing std"):
        check_preprocessing({k: v for k, v in INSIGHTFACE_PREPROCESSING.items() if k != "std"}, "spec")


def test_preprocess_applies_order_scaling_and_layout():
    images = np.zeros((2, 112, 112, 3), np.uint8)
    images[..., 0] = 255  # pure red
    bgr = preprocess(images, SFACE_PREPROCESSING)
    assert bgr.shape == (2, 3, 112, 112) and bgr.dtype == np.float32
    assert bgr[:, 2].min() == 255 and bgr[:, 0].max() == 0
    rgb = preprocess(images, {**INSIGHTFACE_PREPROCESSING, "layout": "NHWC"})
    assert rgb.shape == (2, 112, 112, 3)
    np.testing.assert_allclose(rgb[0, 0, 0], [(255 - 127.5) / 128, -127.5 / 128, -127.5 / 128])
    assert preprocess(images, {**INSIGHTFACE_PREPROCESSING, "size": 96}).shape == (2, 3, 96, 96)


def test_sface_loads_with_its_declared_preprocessing(real_faces):
    teacher = load_teacher("sface")
    assert (teacher.name, teacher.embedding_dim, teacher.classifier) == ("sface", 128, None)
    assert teacher.preprocessing == SFACE_PREPROCESSING
    # The repaired graph (unused inputs dropped, symbolic batch) runs real batches.
    assert teacher.max_batch > 1
    images = np.stack([load_rgb(p) for p in real_faces[:3]])
    batched = teacher.embed(images)
    assert batched.dtype == np.float32 and batched.shape == (3, 128)
    np.testing.assert_allclose(batched[2], teacher.embed(images[2:])[0], atol=1e-4)


def embed_one_at_a_time(model, images: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Embeddings of `images` by onnxruntime running the ONNX `model` as given, face by face."""
    import onnxruntime as ort

    from edgefr.devices.agent import ort_session_options

    session = ort.InferenceSession(model.SerializeToString(), ort_session_options(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: face[None]})[0] for face in preprocess(images, preprocessing)])


def test_faceplugin_runs_without_its_denormal_weights_and_embeds_faces_exactly_as_shipped(real_faces):
    """faceplugin ships 8,938 denormal weights, which x86 multiplies 3.5x slower: the teacher loads them flushed to
    zero and embeds real faces bit for bit as onnxruntime does on the file as shipped."""
    import onnx
    from onnx.numpy_helper import to_array

    from edgefr.teachers.onnx_model import _flush_denormal_weights
    from edgefr.teachers.registry import faceplugin_path

    shipped = onnx.load(str(faceplugin_path()))
    flushed = onnx.load(str(faceplugin_path()))
    assert _flush_denormal_weights(flushed) and not _flush_denormal_weights(flushed)
    zeros = [sum(np.count_nonzero(to_array(t) == 0) for t in m.graph.initializer) for m in (shipped, flushed)]
    assert zeros[1] - zeros[0] == 8938

    images = np.stack([load_rgb(p) for p in real_faces[:4]])
    np.testing.assert_array_equal(load_teacher("faceplugin").embed(images),
                                  embed_one_at_a_time(shipped, images, INSIGHTFACE_PREPROCESSING))


def test_sface_dequantizes_its_weights_once_and_embeds_faces_as_its_quantized_graph(real_faces, monkeypatch):
    """SFace keeps int8 weights behind DequantizeLinear nodes, which onnxruntime would run on every call: the teacher
    folds them into float weights at load and embeds real faces as the graph as shipped does (to the rounding of
    the BatchNormalization that onnxruntime can now fuse). An int8 export's graph, which quantizes activations,
    keeps its DequantizeLinear nodes, and so does a graph whose weights onnx's evaluator cannot compute."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgefr.teachers.onnx_model import _fold_weight_dequantization, _repair_graph
    from edgefr.teachers.registry import sface_path

    shipped = onnx.load(str(sface_path()))
    _repair_graph(shipped, sface_path())
    folded = onnx.load(str(sface_path()))
    _repair_graph(folded, sface_path())
    assert _fold_weight_dequantization(folded) and not _fold_weight_dequantization(folded)
    gone = {n.op_type for n in shipped.graph.node} - {n.op_type for n in folded.graph.node}
    assert gone == {"DequantizeLinear", "Reshape"}, gone

    images = np.stack([load_rgb(p) for p in real_faces[:4]])
    embedded = load_teacher("sface").embed(images)
    as_shipped = embed_one_at_a_time(shipped, images, SFACE_PREPROCESSING)
    np.testing.assert_allclose(embedded, as_shipped, rtol=0, atol=1e-5 * np.abs(as_shipped).max())

    scale, zero = numpy_helper.from_array(np.float32(0.1), "scale"), numpy_helper.from_array(np.int8(0), "zero")
    int8_weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "w_q")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "scale", "zero"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["w"]),
             helper.make_node("Conv", ["x_dq", "w"], ["y"])]
    graph = helper.make_graph(nodes, "int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [scale, zero, int8_weight])
    int8_export = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert not _fold_weight_dequantization(int8_export) and len(int8_export.graph.node) == 4

    def evaluator_lacks_the_op(*args):
        raise NotImplementedError("no implementation for DequantizeLinear(21)")

    monkeypatch.setattr("onnx.reference.ReferenceEvaluator.run", evaluator_lacks_the_op)
    unfolded = onnx.load(str(sface_path()))
    _repair_graph(unfolded, sface_path())
    assert not _fold_weight_dequantization(unfolded) and unfolded == shipped


def test_not_a_model_is_a_one_line_error(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("definitely not protobuf")
    for spec in (fake, tmp_path / "notes.txt", "no_such_teacher"):
        if spec == tmp_path / "notes.txt":
            spec.write_text("hello")
        with pytest.raises(EdgefrError) as exc:
            load_teacher(spec)
        assert "\n" not in str(exc.value) and str(spec) in str(exc.value)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(EdgefrError, match="not an edgefr checkpoint"):
        load_teacher(tmp_path / "other.pt")
    with pytest.raises(EdgefrError, match="channel_order"):
        load_teacher("sface", {**SFACE_PREPROCESSING, "channel_order": "XYZ"})


def test_student_checkpoint_and_torchscript_teachers(tmp_path, real_faces):
    torch.manual_seed(0)
    model = create_model(TINY_ARCH).eval()
    save_student(tmp_path / "student.pt", model)
    images = np.stack([load_rgb(p) for p in real_faces[:2]])
    with torch.no_grad():
        expected = model(torch.from_numpy(preprocess(images, model.preprocessing))).numpy()
    student = load_teacher(tmp_path / "student.pt")
    assert student.preprocessing == model.preprocessing and student.embedding_dim == 128
    np.testing.assert_allclose(student.embed(images), expected, atol=1e-4)

    scripted = torch.jit.trace(model, torch.zeros(1, 3, 112, 112))
    torch.jit.save(scripted, str(tmp_path / "plain.ts"))
    with pytest.raises(EdgefrError, match="declares no preprocessing"):
        load_teacher(tmp_path / "plain.ts")
    torch.jit.save(scripted, str(tmp_path / "declared.pt"),
                   _extra_files={"edgefr.preprocessing": json.dumps(model.preprocessing)})
    np.testing.assert_allclose(load_teacher(tmp_path / "declared.pt").embed(images), expected, atol=1e-4)


@needs_lfw
def test_ensemble_concatenates_normalized_members(real_faces):
    ensemble = load_teacher("sface+faceplugin")
    assert ensemble.name == "sface+faceplugin" and ensemble.embedding_dim == 128 + 512
    out = ensemble.embed(np.stack([load_rgb(p) for p in real_faces[:2]]))
    np.testing.assert_allclose(np.linalg.norm(out[:, :128], axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:, 128:], axis=1), 1, atol=1e-5)


class CountingTeacher:
    """Wraps a teacher to count how many images it embedded."""

    def __init__(self, teacher):
        self.teacher, self.images = teacher, 0
        for attribute in ("name", "preprocessing", "embedding_dim", "fingerprint"):
            setattr(self, attribute, getattr(teacher, attribute))

    def embed(self, images):
        self.images += len(images)
        return self.teacher.embed(images)


def test_cached_embeddings_compute_once_and_follow_the_data(small_imagefolder, tmp_path):
    faces = tmp_path / "faces"
    shutil.copytree(small_imagefolder, faces)
    dataset = ImageFolderFaces(faces, max_per_class=2)
    teacher = CountingTeacher(load_teacher("sface"))
    cache = tmp_path / "cache"
    centre = cached_embeddings(teacher, dataset, "center", cache_dir=cache)
    assert centre.shape == (12, 128) and centre.dtype == np.float32 and teacher.images == 12
    np.testing.assert_array_equal(cached_embeddings(teacher, dataset, "center", cache_dir=cache), centre)
    assert teacher.images == 12  # second call: read from disk
    flipped = cached_embeddings(teacher, dataset, "flip", cache_dir=cache)
    np.testing.assert_allclose(flipped[3], teacher.teacher.embed(dataset.image(3)[None, :, ::-1].copy())[0], atol=1e-4)
    assert teacher.images == 24
    # The cache follows the faces, not their files' times or place: a touched file or a moved copy still hits it.
    path = dataset.samples[0][0]
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    moved = tmp_path / "moved"
    shutil.copytree(faces, moved)
    np.testing.assert_array_equal(cached_embeddings(teacher, ImageFolderFaces(moved, max_per_class=2), "center",
                                                    cache_dir=cache), centre)
    assert teacher.images == 24
    # Another face under the same name misses it, and its row changes.
    Path(path).write_bytes(Path(dataset.samples[2][0]).read_bytes())
    recomputed = cached_embeddings(teacher, dataset, "center", cache_dir=cache)
    assert teacher.images == 36
    np.testing.assert_allclose(recomputed[0], centre[2], atol=1e-5)
    np.testing.assert_allclose(recomputed[1:], centre[1:], atol=1e-5)
    with pytest.raises(EdgefrError, match="--view"):
        cached_embeddings(teacher, dataset, "left", cache_dir=cache)


@needs_lfw
@pytest.mark.slow
def test_wrong_preprocessing_measurably_drops_lfw_accuracy():
    """The silent failure this package guards against: SFace fed insightface-scaled input (its normalization
    is inside the graph) still yields embeddings, but far worse ones. 200 real LFW pairs (20 per fold).
    (Feeding it RGB instead of BGR, by contrast, costs nothing measurable on LFW: SFace is nearly
    channel-order invariant, so that mistake is not the one to test with.)"""
    from edgefr.verify import verify_pairs

    subset = lfw_subset(10)
    right = verify_pairs(load_teacher("sface"), subset, progress=False)
    scaled = verify_pairs(load_teacher("sface", INSIGHTFACE_PREPROCESSING | {"channel_order": "BGR"}), subset,
                          progress=False)
    assert right.accuracy >= 0.97, right.summary()
    assert scaled.accuracy < right.accuracy - 0.10, scaled.summary()
