"""Fixtures shared across test modules: the real face data in ../shared and an isolated edgefr cache."""

from pathlib import Path

import pytest

from edgefr.paths import shared_dir
from tests.support import CELEBA

SHARED = shared_dir()
LFW = SHARED / "faces" / "lfw"

needs_lfw = pytest.mark.skipif(not (LFW / "pairs.txt").is_file(), reason="../shared/faces/lfw is absent")
needs_celeba = pytest.mark.skipif(not CELEBA.is_dir(), reason="../shared/faces/celeba is absent")


@pytest.fixture
def edgefr_cache(tmp_path, monkeypatch) -> Path:
    """EDGEFR_CACHE pointed at a fresh folder, so tests neither read nor leave caches in ~/.cache."""
    folder = tmp_path / "edgefr-cache"
    monkeypatch.setenv("EDGEFR_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def real_faces() -> list[Path]:
    """A few real aligned face JPEGs of different people (LFW)."""
    if not LFW.is_dir():
        pytest.skip("../shared/faces/lfw is absent")
    people = [p for p in sorted(LFW.iterdir()) if p.is_dir()][:6]
    return [sorted(p.glob("*.jpg"))[0] for p in people]


@pytest.fixture(scope="session")
def small_imagefolder(tmp_path_factory) -> Path:
    """An ImageFolder of 6 real CelebA identities x 5 images (copies, so tests may add broken files)."""
    if not CELEBA.is_dir():
        pytest.skip("../shared/faces/celeba is absent")
    root = tmp_path_factory.mktemp("faces6")
    for identity in sorted(p for p in CELEBA.iterdir() if p.is_dir())[:6]:
        (root / identity.name).mkdir()
        for image in sorted(identity.glob("*.jpg"))[:5]:
            (root / identity.name / image.name).write_bytes(image.read_bytes())
    return root


def lfw_subset(per_fold_and_kind: int):
    """The first n same and n different LFW pairs of each fold, keeping the 10-fold structure."""
    from edgefr.data.pairs import read_lfw_pairs

    return read_lfw_pairs(LFW / "pairs.txt", LFW).per_fold_subset(2 * per_fold_and_kind)


DISTILLED_ARCH = "mobilefacenet_w050_d050_relu"


@pytest.fixture(scope="session")
def distilled_student(tmp_path_factory):
    """A small student distilled for 3 epochs from SFace on ~2000 CelebA faces (96 identities) with the short-run
    recipe, once per session, with its own teacher-embedding cache: the trained model the int8 and accuracy tests
    need (tests/test_distill.py asserts that it beats its initialization on LFW)."""
    import torch

    from edgefr.distill import SHORT_RUN_RECIPE, distill

    from tests.support import first_identities

    root = tmp_path_factory.mktemp("distilled")
    faces = first_identities(root / "faces", 96)  # skips when CelebA is absent
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic (and result) whichever test asks first
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("EDGEFR_CACHE", str(root / "cache"))
            return distill(DISTILLED_ARCH, "sface", faces, epochs=3, out=root / "run", progress=False,
                           **SHORT_RUN_RECIPE)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tables_here(tmp_path_factory) -> Path:
    """The shipped latency tables, each brought to this machine where it was measured on another one (another CPU
    name or runtime version, or blocks running off their table times): relabelled as this host's and scaled to its
    speed. `edgefr search` would profile such a host first (8-18 min); tests of the search's mechanics run on the
    shipped blocks at this machine's speed. The checks themselves are tested in tests/test_latency.py."""
    from edgefr.devices import resolve_device
    from edgefr.devices.agent import cpu_model, runtime_version
    from edgefr.latency import load_table, table_path
    from edgefr.latency.profile import speed_against_table
    from tests.support import table_at_speed

    folder = tmp_path_factory.mktemp("latency-tables")
    for name in ("host-ort", "host-tflite", "host-tflite-int8"):
        device = resolve_device(name)
        shipped = load_table(table_path(name))
        here = {"cpu": cpu_model(), "runtime_version": runtime_version(device.runtime)}
        speed = speed_against_table(device, shipped)
        if speed["other_machine"] or any(shipped.device.get(key) != value for key, value in here.items()):
            table_at_speed(shipped, speed["factor"], folder / f"{name}.json", here)
        else:
            (folder / f"{name}.json").write_bytes(table_path(name).read_bytes())
    return folder


@pytest.fixture
def host_tables_here(tables_here, monkeypatch) -> Path:
    """EDGEFR_LATENCY_TABLES pointed at `tables_here` for this test and the commands it runs."""
    monkeypatch.setenv("EDGEFR_LATENCY_TABLES", str(tables_here))
    return tables_here
