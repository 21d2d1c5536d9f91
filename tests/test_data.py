"""Face data: decoding, the ImageFolder dataset, augmentation, pairs, insightface files, alignment."""

import logging
import pickle
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import LFW, needs_lfw

from edgefr.data.augment import train_transform
from edgefr.data.faces import ImageFolderFaces, load_rgb
from edgefr.data.insightface import (
    RecordIOFaces,
    RecordIOReader,
    bin_to_pairset,
    pack_image_record,
    read_bin_pairs,
    write_recordio,
)
from edgefr.data.pairs import read_lfw_pairs, sample_imagefolder_pairs
from edgefr.errors import EdgefrError


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# --- decoding and the dataset -----------------------------------------------------------------------------------

def test_load_rgb_returns_rgb_uint8(real_faces):
    image = load_rgb(real_faces[0])
    assert image.dtype == np.uint8 and image.shape == (112, 112, 3)
    np.testing.assert_array_equal(image, cv2.imread(str(real_faces[0]))[:, :, ::-1])


def test_load_rgb_refuses_truncated_jpeg(real_faces, tmp_path):
    broken = tmp_path / "broken.jpg"
    data = real_faces[0].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgefrError) as exc:
        load_rgb(broken)
    assert str(broken) in one_line(exc) and "truncated" in str(exc.value)
    with pytest.raises(EdgefrError, match="cannot read"):
        load_rgb(tmp_path / "missing.jpg")


@pytest.fixture
def faces_copy(small_imagefolder, tmp_path):
    root = tmp_path / "faces"
    shutil.copytree(small_imagefolder, root)
    return root


def test_imagefolder_items(faces_copy):
    dataset = ImageFolderFaces(faces_copy)
    assert len(dataset.classes) == 6 and len(dataset) == 30 and dataset.skipped == []
    image, label, index = dataset[7]
    assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
    assert (label, index) == (dataset.samples[7][1], 7)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), load_rgb(dataset.samples[7][0]))
    assert len(ImageFolderFaces(faces_copy, max_per_class=2)) == 12
    assert len(ImageFolderFaces(faces_copy, limit=4)) == 4
    subset = dataset.subset([3, 20])
    assert len(subset) == 2 and subset.samples[1] == dataset.samples[20] and subset.classes == dataset.classes


def test_imagefolder_skips_truncated_jpeg_with_a_count(faces_copy, caplog):
    victim = sorted((faces_copy / sorted(p.name for p in faces_copy.iterdir())[0]).glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:600])
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderFaces(faces_copy)
    assert dataset.skipped == [str(victim)] and len(dataset) == 29
    assert "skipped 1 unreadable" in caplog.text


def test_imagefolder_replaces_an_undecodable_image_while_training(faces_copy, caplog):
    dataset = ImageFolderFaces(faces_copy)
    path = dataset.samples[4][0]
    # Valid JPEG start and end markers around garbage: passes the cheap check, fails to decode.
    (faces_copy / path).write_bytes(b"\xff\xd8" + b"\x00" * 500 + b"\xff\xd9")
    with caplog.at_level(logging.WARNING):
        image, label, index = dataset[4]
    assert index == 5 and label == dataset.samples[5][1] and image.shape == (3, 112, 112)
    assert dataset.skipped == [path] and "skipped unreadable image" in caplog.text


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "person_a").mkdir()
    with pytest.raises(EdgefrError) as exc:
        ImageFolderFaces(tmp_path)
    assert str(tmp_path) in one_line(exc)
    with pytest.raises(EdgefrError, match="no such image folder"):
        ImageFolderFaces(tmp_path / "missing")


# --- augmentation -----------------------------------------------------------------------------------------------

def test_augmentation_keeps_shape_and_dtype(real_faces):
    image = torch.from_numpy(load_rgb(real_faces[0])).permute(2, 0, 1).contiguous()
    augment = train_transform(seed=0)
    outputs = [augment(image) for _ in range(4)]
    assert all(o.dtype == torch.uint8 and o.shape == (3, 112, 112) for o in outputs)
    assert any(not torch.equal(o, image) for o in outputs)
    again = train_transform(seed=0)
    assert all(torch.equal(o, again(image)) for o in outputs)  # seeded: reproducible


def test_augmentation_flips_exactly_when_asked(real_faces):
    image = torch.from_numpy(load_rgb(real_faces[1])).permute(2, 0, 1).contiguous()
    plain = dict(max_shift=0, brightness=0, contrast=0, saturation=0)
    assert torch.equal(train_transform(seed=1, flip_p=1.0, **plain)(image), image.flip(-1))
    assert torch.equal(train_transform(seed=1, flip_p=0.0, **plain)(image), image)
    shifted = train_transform(seed=3, flip_p=0.0, max_shift=4, brightness=0, contrast=0, saturation=0)(image)
    # A pure translation of at most 4 px: the centre of the face stays within 4 px of where it was.
    assert min((shifted[:, 8:-8, 8:-8].int() - image[:, 8 + dy:104 + dy, 8 + dx:104 + dx].int()).abs().max()
               for dy in range(-4, 5) for dx in range(-4, 5)) == 0


# --- pairs ------------------------------------------------------------------------------------------------------

@needs_lfw
def test_read_lfw_pairs():
    pairs = read_lfw_pairs(LFW / "pairs.txt", LFW)
    assert len(pairs) == 6000 and pairs.same.sum() == 3000 and len(pairs.unique_paths()) == 7701
    assert np.bincount(pairs.fold).tolist() == [600] * 10
    assert pairs.left[0].endswith("Abel_Pacheco/Abel_Pacheco_0001.jpg") and pairs.same[0]


def test_missing_pair_image_is_named(real_faces, tmp_path):
    person = real_faces[0].parent.name
    (tmp_path / person).mkdir()
    shutil.copy(real_faces[0], tmp_path / person / f"{person}_0001.jpg")
    pairs_txt = tmp_path / "pairs.txt"
    pairs_txt.write_text(f"1\t1\n{person}\t1\t1\n{person}\t1\tNobody\t3\n")
    with pytest.raises(EdgefrError) as exc:
        read_lfw_pairs(pairs_txt, tmp_path)
    assert "Nobody_0003.jpg" in one_line(exc) and str(pairs_txt) in str(exc.value)
    pairs_txt.write_text("ten three\n")
    with pytest.raises(EdgefrError, match="first line"):
        read_lfw_pairs(pairs_txt, tmp_path)


def test_sample_imagefolder_pairs_is_balanced_and_seeded(small_imagefolder):
    pairs = sample_imagefolder_pairs(small_imagefolder, n_pairs=40, seed=0, folds=10)
    assert len(pairs) == 40 and pairs.same.sum() == 20
    assert all(pairs.same[pairs.fold == k].sum() == 2 for k in range(10))
    same_identity = [a.split("/")[-2] == b.split("/")[-2] for a, b in zip(pairs.left, pairs.right)]
    assert same_identity == pairs.same.tolist()
    assert len({frozenset(p) for p in zip(pairs.left, pairs.right)}) == 40
    again = sample_imagefolder_pairs(small_imagefolder, n_pairs=40, seed=0, folds=10)
    assert again.left == pairs.left and again.right == pairs.right
    with pytest.raises(EdgefrError, match="multiple of 20"):
        sample_imagefolder_pairs(small_imagefolder, n_pairs=30, seed=0)


# --- insightface files ------------------------------------------------------------------------------------------

def test_recordio_round_trip_on_real_faces(real_faces, tmp_path):
    encoded = [p.read_bytes() for p in real_faces]
    labels = [3, 3, 1, 0, 2, 2]
    # insightface layout: record 0 is a header whose label[0] is one past the last image record.
    header = pack_image_record([len(encoded) + 1, len(encoded) + 1], b"")
    write_recordio(tmp_path / "train.rec", [header] + [pack_image_record(l, e, i + 1)
                                                        for i, (l, e) in enumerate(zip(labels, encoded))])
    dataset = RecordIOFaces(tmp_path / "train.rec")
    assert len(dataset) == len(encoded)
    for i, path in enumerate(real_faces):
        image, label, index = dataset[i]
        assert (label, index) == (labels[i], i)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), load_rgb(path))
    assert RecordIOReader(tmp_path / "train.rec").read(2)[24:] == encoded[1]


def test_recordio_with_a_stale_index_is_an_error(real_faces, tmp_path):
    write_recordio(tmp_path / "train.rec", [pack_image_record(0, real_faces[0].read_bytes())])
    (tmp_path / "train.idx").write_text("0\t3\n")
    with pytest.raises(EdgefrError, match="no RecordIO magic"):
        RecordIOFaces(tmp_path / "train.rec")[0]
    with pytest.raises(EdgefrError, match="needs both"):
        RecordIOReader(tmp_path / "other.rec")


def test_bin_pairs_round_trip(real_faces, tmp_path):
    encoded = [p.read_bytes() for p in real_faces[:4]]
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((encoded, [True, False]), protocol=2))
    images, issame = read_bin_pairs(path)
    assert images == encoded and issame.tolist() == [True, False]
    pairs = bin_to_pairset(path, tmp_path / "unpacked", folds=2)
    assert pairs.same.tolist() == [True, False] and pairs.fold.tolist() == [0, 1]
    np.testing.assert_array_equal(load_rgb(pairs.right[1]), load_rgb(real_faces[3]))


class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os
        return os.system, (self.command,)


def test_malicious_bin_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_RunsCommand(f"touch {marker}")], [True])))
    with pytest.raises(EdgefrError) as exc:
        read_bin_pairs(path)
    assert "system" in one_line(exc) and str(path) in str(exc.value)
    assert not marker.exists()


# --- alignment --------------------------------------------------------------------------------------------------

def _raw_photo(face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A "raw photo" made from an aligned face: scaled 2x, rotated 10 degrees, off-centre on a larger canvas;
    and the 2x3 matrix that made it."""
    matrix = cv2.getRotationMatrix2D((56, 56), 10, 2.0)
    matrix[:, 2] += (140, 90)
    return cv2.warpAffine(face, matrix, (400, 320), borderMode=cv2.BORDER_REPLICATE), matrix


def test_similarity_warp_undoes_a_known_transform(real_faces):
    from edgefr.data.align import ARCFACE_TEMPLATE, warp_to_template

    face = load_rgb(real_faces[2])
    raw, matrix = _raw_photo(face)
    landmarks = ARCFACE_TEMPLATE @ matrix[:, :2].T + matrix[:, 2]
    restored = warp_to_template(raw, landmarks.astype(np.float32)).astype(np.float32)
    assert np.abs(restored[8:-8, 8:-8] - face[8:-8, 8:-8]).mean() < 3


def test_align_folder_finds_the_face_and_reports_the_rest(real_faces, tmp_path):
    from edgefr.data.align import align_folder
    from edgefr.teachers import l2_normalize, load_teacher

    raw_dir = tmp_path / "raw" / "person"
    raw_dir.mkdir(parents=True)
    face = load_rgb(real_faces[2])
    cv2.imwrite(str(raw_dir / "photo.png"), cv2.cvtColor(_raw_photo(face)[0], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(raw_dir / "wall.png"), np.full((200, 200, 3), 128, np.uint8))
    (raw_dir / "broken.jpg").write_bytes(b"not an image")
    report = align_folder(tmp_path / "raw", tmp_path / "aligned")
    assert report.aligned == 1 and report.no_face == ["person/wall.png"] and report.unreadable == ["person/broken.jpg"]
    assert (tmp_path / "aligned" / "no_face.txt").read_text() == "person/wall.png\n"
    aligned = load_rgb(tmp_path / "aligned" / "person" / "photo.jpg")
    # The re-detected crop is the same face to a recognition model: as close to the original crop as a
    # second photo of a person usually is, and far closer than another person's face.
    embeddings = l2_normalize(load_teacher("sface").embed(np.stack([face, aligned, load_rgb(real_faces[3])])))
    assert embeddings[0] @ embeddings[1] > 0.6 and embeddings[1] @ embeddings[2] < 0.3
