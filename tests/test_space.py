"""The search space, architectures as JSON, and the registry of named models."""

import json

import onnx
import pytest
import torch

from edgefr.errors import EdgefrError
from edgefr.space import (MFN_SPACE, BlockSpec, count_flops, count_params, create_model, list_models, load_arch_file,
                          load_student, resolve_arch, save_student)
from tests.support import assert_one_line_error, run_edgefr


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_runs_and_exports_to_onnx(name, tmp_path):
    model = create_model(name).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, model.arch.embedding)
    assert torch.isfinite(y).all()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x[:1],), str(path), dynamo=True, external_data=False)
    onnx.checker.check_model(onnx.load(str(path)))
    assert MFN_SPACE.validate(model.arch) is model.arch


def test_mobilefacenet_matches_the_paper():
    """Chen et al. 2018: 0.99M parameters, 221M MAdds (= ~442 MFLOPs counting 2 FLOPs per MAC)."""
    model = create_model("mobilefacenet")
    assert count_params(model) == pytest.approx(0.99e6, rel=0.02)
    assert count_flops(model) == pytest.approx(2 * 221e6, rel=0.02)
    arch = model.arch
    assert arch.depths() == (1, 5, 7, 3) and arch.widths() == (64, 64, 128, 128) and arch.embedding == 128


def test_scaled_variants_are_ordered_by_size():
    sizes = [count_flops(create_model(n)) for n in ("mobilefacenet_w050", "mobilefacenet_w075", "mobilefacenet",
                                                    "mobilefacenet_w125")]
    assert sizes == sorted(sizes) and sizes[0] < 0.4 * sizes[2]


def test_arch_json_round_trip(tmp_path):
    arch = resolve_arch("mobilefacenet_d050")
    path = tmp_path / "arch.json"
    arch.save(path)
    assert load_arch_file(path) == arch
    assert create_model(str(path)).arch == arch


def test_block_specs_chain_shapes():
    specs = resolve_arch("mobilefacenet").block_specs()
    assert specs[0].kind == "stem" and specs[-1].kind == "head"
    for prev, nxt in zip(specs, specs[1:]):
        assert prev.cout == nxt.cin and prev.out_res == nxt.res
    residual = [s for s in specs if s.residual]
    assert len(residual) == 4 + 6 + 2  # every non-first MobileFaceNet bottleneck has a skip connection


def test_block_key_names_everything_that_changes_runtime():
    a = BlockSpec("ir", 28, 64, 64, 1, 2, 3, "relu")
    assert a.key == "ir:r28:c64-64:s1:e2:k3:relu:res"
    assert BlockSpec("ir", 28, 64, 64, 1, 2, 3, "prelu").key != a.key
    assert BlockSpec("ir", 28, 64, 64, 2, 2, 3, "relu").key.endswith(":nores")


def test_space_enumerates_the_blocks_of_its_archs():
    keys = {s.key for s in MFN_SPACE.all_block_specs()}
    assert len(keys) == 552
    for name in list_models():
        assert {s.key for s in resolve_arch(name).block_specs()} <= keys


def test_arch_outside_the_space_is_a_clear_error(tmp_path):
    doc = resolve_arch("mobilefacenet").to_dict()
    doc["stages"][2]["width"] = 100
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(EdgefrError, match=r"bad.json: stages\[2\].width=100 is outside the search space"):
        resolve_arch(str(bad))
    doc["stages"][2]["width"] = 128
    doc["stages"][1]["layers"][0]["kernel"] = "3"
    bad.write_text(json.dumps(doc))
    with pytest.raises(EdgefrError, match=r"stages\[1\].layers\[0\].kernel must be an integer"):
        resolve_arch(str(bad))


def test_cli_rejects_an_arch_json_that_violates_the_space(tmp_path):
    doc = resolve_arch("mobilefacenet").to_dict()
    doc["stages"][1]["layers"][0]["expansion"] = 3
    bad = tmp_path / "arch.json"
    bad.write_text(json.dumps(doc))
    assert_one_line_error(run_edgefr("latency", "--arch", str(bad), "--device", "host-ort"),
                          "arch.json", "stages[1].layers[0]", "outside the search space")
    bad.write_text("{not json")
    assert_one_line_error(run_edgefr("latency", "--arch", str(bad), "--device", "host-ort"), "not valid JSON")


def test_student_checkpoint_round_trip(tmp_path):
    model = create_model("mobilefacenet_w050").eval()
    save_student(tmp_path / "s.pt", model, epoch=3)
    loaded, payload = load_student(tmp_path / "s.pt")
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert payload["epoch"] == 3 and loaded.arch == model.arch
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EdgefrError, match="junk.pt: not an edgefr checkpoint"):
        load_student(tmp_path / "junk.pt")
