"""The bundled default models built by ``scripts/build_default_model.py``, checked with real OpenVINO inference.

An up-to-date ``build/`` (as ``python -m scripts.build_default_model`` leaves it) is reused; otherwise both
models are built into a temporary folder, which takes about a minute and a half on two cores.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # scripts/ is a folder of the repository, not part of the installed package
    sys.path.insert(0, str(ROOT))

from scripts import build_default_model as bdm  # noqa: E402
from scripts import fashion_data  # noqa: E402

Paths = dict[str, dict[str, Path]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    repo_build = ROOT / "build"
    if all(bdm.is_up_to_date(repo_build, arch) for arch in bdm.SPECS):
        return bdm.build_default(repo_build, log=False)
    if not all((fashion_data.DATA_DIR / name).is_file() for name in fashion_data.DATA_FILES.values()):
        pytest.skip("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
    pytest.importorskip("torch", reason="building the default models needs torch (pip install -e '.[train]')")
    return bdm.build_default(tmp_path_factory.mktemp("build"), log=False)


def compile_f32(xml: Path) -> ov.CompiledModel:
    # The CPU plugin defaults to bf16 on AMX machines; the accuracy bounds are for f32.
    return ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def openvino_accuracy(xml: Path, test_npz: Path) -> float:
    request = compile_f32(xml).create_infer_request()
    test = np.load(test_npz)
    logits = np.concatenate([request.infer({"image": test["x"][i:i + 1000].astype(np.float32)})["logits"]
                             for i in range(0, len(test["x"]), 1000)])
    return float((logits.argmax(axis=1) == test["y"]).mean())


def constant_types(xml: Path) -> list[str]:
    """Element types of every Const layer in an IR .xml."""
    layers = ET.parse(xml).getroot().iter("layer")
    return [layer.find("data").get("element_type") for layer in layers if layer.get("type") == "Const"]


@pytest.mark.parametrize("arch", list(bdm.SPECS))
def test_files_exist(built: Paths, arch: str) -> None:
    paths = built[arch]
    for key, path in paths.items():
        assert path.exists(), f"{key}: {path} is missing"
    assert sorted(p.name for p in paths["calib_dir"].iterdir())[:2] == ["00000.png", "00001.png"]
    assert len(list(paths["calib_dir"].glob("*.png"))) == bdm.CALIB_SIZE
    calib, test = np.load(paths["calib_npz"]), np.load(paths["test_npz"])
    assert calib["x"].shape == (1000, 1, 28, 28) and calib["x"].dtype == np.uint8
    assert test["x"].shape == (10000, 1, 28, 28) and test["x"].dtype == np.uint8
    assert test["y"].shape == (10000,) and test["y"].dtype == np.int64


def test_calib_pngs_are_the_calib_npz_images(built: Paths) -> None:
    paths = built["lenet"]
    calib = np.load(paths["calib_npz"])["x"]
    for index in (0, 1, 999):
        with Image.open(paths["calib_dir"] / f"{index:05d}.png") as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.asarray(image), calib[index, 0])


def test_lenet_openvino_f32_accuracy(built: Paths) -> None:
    paths = built["lenet"]
    acc = openvino_accuracy(paths["xml"], paths["test_npz"])
    assert acc > 0.85
    assert acc == pytest.approx(bdm.read_manifest(paths["dir"].parent, "lenet")["accuracy"]["openvino_f32"], abs=2e-3)


def test_seven_act_openvino_f32_accuracy(built: Paths) -> None:
    paths = built["seven"]
    assert openvino_accuracy(paths["xml"], paths["test_npz"]) > 0.80


def test_io_names_and_dynamic_batch(built: Paths) -> None:
    for paths in built.values():
        model = ov.Core().read_model(str(paths["xml"]))
        assert model.input(0).get_names() == {"image"}
        assert model.output(0).get_names() == {"logits"}
        assert model.input(0).get_partial_shape().to_string() == "[?,1,28,28]"


@pytest.mark.parametrize("arch", list(bdm.SPECS))
def test_ir_weights_are_f32(built: Paths, arch: str) -> None:
    types = constant_types(built[arch]["xml"])
    assert "f32" in types
    assert not {"f16", "bf16"} & set(types), f"compressed constants in {built[arch]['xml'].name}: {types}"


def test_seven_act_ir_has_every_activation_type(built: Paths) -> None:
    model = ov.Core().read_model(str(built["seven"]["xml"]))
    present = {op.get_type_name() for op in model.get_ordered_ops()}
    assert set(bdm.SEVEN_OPS) <= present, f"missing: {set(bdm.SEVEN_OPS) - present}"


def test_up_to_date_build_is_not_rewritten(built: Paths) -> None:
    before = {arch: paths["bin"].stat().st_mtime_ns for arch, paths in built.items()}
    again = bdm.build_default(built["lenet"]["dir"].parent, log=False)
    assert {arch: paths["bin"].stat().st_mtime_ns for arch, paths in again.items()} == before


def test_missing_dataset_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bdm.main(["--out", str(tmp_path / "out"), "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "out").exists()
