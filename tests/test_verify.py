"""Verification: the 10-fold protocol, model loading with declared preprocessing, and `edgefr eval`."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import LFW, lfw_subset, needs_lfw

from edgefr.cli import cli
from edgefr.data.pairs import read_lfw_pairs
from edgefr.errors import EdgefrError
from edgefr.teachers import INSIGHTFACE_PREPROCESSING, load_teacher
from edgefr.verify import (
    best_threshold,
    kfold_accuracy,
    load_embedder,
    paired_accuracy_drop,
    tar_at_far,
    verify_pairs,
)

# --- the protocol on hand-made scores ---------------------------------------------------------------------------

def test_best_threshold_separates_and_counts_ties():
    similarities = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    same = np.array([False, False, False, True, True, True])
    threshold, accuracy = best_threshold(similarities, same)
    assert accuracy == 1.0 and 0.3 < threshold < 0.7
    # One same pair below every different pair: the best cut still misclassifies only that one.
    threshold, accuracy = best_threshold(np.array([0.05, 0.1, 0.2, 0.8]), np.array([True, False, False, True]))
    assert accuracy == 0.75 and 0.2 < threshold < 0.8
    # Equal scores cannot be split by any threshold.
    assert best_threshold(np.array([0.5, 0.5]), np.array([True, False]))[1] == 0.5


def test_kfold_holds_out_each_fold_and_tar_at_far():
    same = np.tile([True, False], 10)
    similarities = np.where(same, 0.8, 0.2) + np.linspace(0, 0.01, 20)
    fold = np.repeat(np.arange(10), 2)
    accuracies, thresholds = kfold_accuracy(similarities, same, fold)
    assert accuracies == [1.0] * 10 and all(0.2 < t < 0.8 for t in thresholds)
    impostors = np.linspace(0, 1, 1000, endpoint=False)  # 1000 different pairs, evenly spread
    genuine = np.array([0.5, 0.95, 0.995, 0.9995])
    tars = tar_at_far(np.concatenate([genuine, impostors]), np.r_[[True] * 4, [False] * 1000])
    # FAR 0.1 -> threshold 0.9: 3 of 4 genuine above; 0.01 -> 0.99: 2; 0.001 -> 0.999: 1.
    assert tars == {0.1: 0.75, 0.01: 0.5, 0.001: 0.25}


def test_paired_drop_decides_both_at_the_reference_thresholds_and_counts_discordant_pairs():
    same = np.tile([True, False], 100)
    fold = np.repeat(np.arange(10), 20)
    reference = np.where(same, 0.6, 0.2) + np.linspace(0, 0.01, 200)  # separable: every threshold is in 0.21..0.6
    assert paired_accuracy_drop(reference, reference, same, fold) == (0.0, 0.0)
    # A shift of the whole similarity scale: re-fitted thresholds would follow it (10-fold accuracy still 100%),
    # the reference's put every same-identity pair below them.
    shifted = reference - 0.45
    assert kfold_accuracy(shifted, same, fold)[0] == [1.0] * 10
    assert paired_accuracy_drop(reference, shifted, same, fold) == (0.5, pytest.approx(np.sqrt(100) / 200))
    # Three pairs lost and one gained (the reference's one error, a different pair above its threshold, put right).
    wrong_once = reference.copy()
    wrong_once[1] = 0.7
    other = wrong_once.copy()
    other[[0, 2, 4]] = 0.0  # three same-identity pairs now below
    other[1] = 0.2
    drop, error = paired_accuracy_drop(wrong_once, other, same, fold)
    assert drop == pytest.approx(2 / 200) and error == pytest.approx(2 / 200)


# --- real models on real pairs ----------------------------------------------------------------------------------

class CountingEmbedder:
    def __init__(self, inner):
        self.inner, self.name, self.preprocessing, self.images = inner, inner.name, inner.preprocessing, 0

    def embed(self, images):
        self.images += len(images)
        return self.inner.embed(images)


@needs_lfw
def test_verify_pairs_embeds_each_image_once_and_flip_embeds_mirrors():
    pairs = lfw_subset(3)  # 60 pairs
    embedder = CountingEmbedder(load_teacher("sface"))
    result = verify_pairs(embedder, pairs, progress=False)
    assert embedder.images == len(pairs.unique_paths()) < 120
    assert result.n_pairs == 60 and len(result.fold_accuracies) == 10 and result.accuracy >= 0.9
    assert set(result.tar_at_far) == {0.1, 0.01, 0.001}
    data = result.to_dict()
    assert json.loads(json.dumps(data))["tar_at_far"].keys() == {"0.1", "0.01", "0.001"}
    flipped = verify_pairs(embedder, pairs, flip=True, progress=False)
    assert embedder.images == 3 * len(pairs.unique_paths()) and flipped.flip
    assert not np.allclose(flipped.similarities, result.similarities)


@needs_lfw
def test_onnx_metadata_declares_preprocessing(tmp_path):
    import onnx
    from conftest import SHARED

    model = onnx.load(str(SHARED / "models" / "faceplugin_mbf512.onnx"))
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(EdgefrError, match="declares no preprocessing"):
        load_embedder(bare)
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgefr.preprocessing", json.dumps(INSIGHTFACE_PREPROCESSING)
    onnx.save(model, str(tmp_path / "declared.onnx"))
    embedder = load_embedder(tmp_path / "declared.onnx")
    assert embedder.preprocessing == INSIGHTFACE_PREPROCESSING and embedder.embedding_dim == 512
    entry.value = json.dumps({**INSIGHTFACE_PREPROCESSING, "channel_order": "XYZ"})
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(EdgefrError, match="metadata.*channel_order"):
        load_embedder(tmp_path / "broken.onnx")


def test_tflite_metadata_declares_preprocessing(tmp_path, real_faces):
    """A small student converted to TFLite (as the export stage does) evaluates like the PyTorch original."""
    import torch

    from edgefr.data.faces import load_rgb
    from edgefr.space import create_model
    from edgefr.teachers import preprocess
    from edgefr.verify import set_tflite_metadata

    litert_torch = pytest.importorskip("litert_torch")
    torch.manual_seed(0)
    model = create_model("mobilefacenet_w050_d050_relu").eval()
    path = tmp_path / "student.tflite"
    litert_torch.convert(model, (torch.zeros(1, 3, 112, 112),)).export(str(path))
    with pytest.raises(EdgefrError, match="declares no preprocessing"):
        load_embedder(path)
    set_tflite_metadata(path, "edgefr.preprocessing", json.dumps(model.preprocessing).encode())
    embedder = load_embedder(path)
    assert embedder.preprocessing == model.preprocessing
    images = np.stack([load_rgb(p) for p in real_faces[:3]])
    with torch.no_grad():
        expected = model(torch.from_numpy(preprocess(images, model.preprocessing))).numpy()
    np.testing.assert_allclose(embedder.embed(images), expected, atol=1e-3)
    (tmp_path / "fake.tflite").write_bytes(b"\0" * 64)
    with pytest.raises(EdgefrError, match="not a TFLite model"):
        load_embedder(tmp_path / "fake.tflite")


# --- the command line -------------------------------------------------------------------------------------------

def run_cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.mark.parametrize("args, complaint", [
    (["eval", "--model", "no_such_model"], "unknown teacher"),
    (["eval", "--model", "sface", "--pairs", "/nonexistent/pairs.txt"], "cannot read pairs file"),
    (["eval", "--model", "sface", "--imagefolder", "/nonexistent"], "no such image folder"),
    (["eval", "--model", "sface", "--preprocessing", ('{"channel_order": "XYZ", "mean": 0, "std": 1, '
                                                      '"layout": "NCHW", "size": 112}'),
      "--imagefolder", "/nonexistent"], "channel_order"),
    (["teacher", "embed", "--data", "/nonexistent"], "no such image folder"),
    (["align", "--src", "/nonexistent", "--out", "/tmp/x"], "no such folder"),
])
def test_cli_bad_input_is_one_line_exit_2(args, complaint):
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and complaint in lines[0]
    assert "Traceback" not in result.output


def test_eval_without_pairs_says_what_to_pass(tmp_path):
    result = run_cli("eval", "--model", "sface", env={"EDGEFR_SHARED": str(tmp_path)})
    assert result.exit_code == 2 and "pass --pairs PAIRS.txt --images DIR" in result.output


def test_eval_and_teacher_embed_on_an_imagefolder(small_imagefolder, tmp_path, edgefr_cache):
    result = run_cli("eval", "--model", "sface", "--imagefolder", str(small_imagefolder), "--n-pairs", "20",
                     "--json", str(tmp_path / "result.json"))
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "TAR@FAR=0.001" in result.output
    assert json.loads((tmp_path / "result.json").read_text())["n_pairs"] == 20
    result = run_cli("teacher", "embed", "--teacher", "sface", "--data", str(small_imagefolder), "--view", "flip")
    assert result.exit_code == 0, result.output
    assert "30 x 128" in result.output and str(edgefr_cache) in result.output


# --- reference accuracies on the whole of LFW (minutes on 2 CPU cores) ------------------------------------------

@needs_lfw
@pytest.mark.slow
def test_sface_reproduces_its_lfw_reference(tmp_path):
    result = run_cli("eval", "--model", "sface", "--json", str(tmp_path / "sface.json"))
    assert result.exit_code == 0, result.output
    measured = json.loads((tmp_path / "sface.json").read_text())
    assert measured["n_pairs"] == 6000
    assert abs(100 * measured["accuracy"] - 99.17) <= 0.3, result.output


@needs_lfw
@pytest.mark.slow
def test_faceplugin_reproduces_its_lfw_reference():
    result = verify_pairs(load_embedder("faceplugin"), read_lfw_pairs(LFW / "pairs.txt", LFW), progress=False)
    assert abs(100 * result.accuracy - 98.95) <= 0.3, result.summary()
