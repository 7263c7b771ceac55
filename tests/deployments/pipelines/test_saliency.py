from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from deployments.pipelines.saliency import DEFAULT_INPUT_SIZE, SaliencyModel
from deployments.pipelines.tiny_saliency import INPUT_SIZE, draw_subject, write_tiny_saliency


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_saliency(tmp_path_factory.mktemp("tiny-saliency"))


@pytest.fixture(scope="module")
def model(tiny_dir) -> SaliencyModel:
    return SaliencyModel.load(str(tiny_dir), device="cpu")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def assert_aligned(mask: Image.Image, true: Image.Image, margin: int = 9) -> None:
    """IoU > 0.9, and the mask is ~255 well inside the subject and ~0 well outside it."""
    got, want = np.asarray(mask), np.asarray(true)
    assert mask.mode == "L" and mask.size == true.size
    assert iou(got > 127, want > 127) > 0.9
    interior = np.asarray(true.filter(ImageFilter.MinFilter(margin))) == 255
    exterior = np.asarray(true.filter(ImageFilter.MaxFilter(margin))) == 0
    assert interior.any() and exterior.any()
    assert got[interior].min() >= 240
    assert got[exterior].max() <= 15


# Off-centre subjects: a flipped, transposed or shifted mask misses them.
CASES = [
    ((301, 157), (20, 8, 150, 88)),  # wide, odd sizes, subject at the top left
    ((157, 301), (60, 170, 150, 290)),  # tall, subject at the bottom right
    ((256, 256), (10, 30, 120, 100)),  # the model's own size
    ((999, 401), (600, 40, 950, 300)),  # larger than the model's input: upsampled mask
    ((97, 63), (5, 5, 50, 40)),  # smaller than the input
]


@pytest.mark.parametrize(("size", "box"), CASES)
def test_mask_matches_the_subject(model, size, box):
    image, true = draw_subject(size, box)
    mask = model(image)
    assert_aligned(mask, true)


@pytest.mark.parametrize(("size", "box"), CASES[:2])
def test_geometry_bugs_would_fail(model, size, box):
    """The checks above can fail: a flipped or shifted mask has a low IoU with the truth."""
    image, true = draw_subject(size, box)
    mask = np.asarray(model(image)) > 127
    want = np.asarray(true) > 127
    assert iou(mask[::-1, :], want) < 0.5
    assert iou(mask[:, ::-1], want) < 0.5
    assert iou(np.roll(mask, 12, axis=1), want) < 0.9


def test_input_mode_is_converted(model):
    image, true = draw_subject((200, 120), (20, 20, 100, 100))
    assert_aligned(model(image.convert("RGBA")), true)


def test_model_facts(model):
    assert model.preprocess.input_size == (INPUT_SIZE, INPUT_SIZE)
    assert model.preprocess.output == "minmax"
    assert model.providers == ["CPUExecutionProvider"]


def test_concurrent_calls_agree(model):
    images = [draw_subject((180 + 7 * i, 150), (10 + 5 * i, 10, 120, 140))[0] for i in range(6)]
    alone = [np.asarray(model(image)) for image in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda im: np.asarray(model(im)), images * 2))
    for i, got in enumerate(together):
        assert np.array_equal(got, alone[i % len(images)])


# -- loading: layouts and refusals --------------------------------------------------------


def write_model(directory: Path, input_shape, output_shape, *, op="ReduceMean", inputs=1,
                preprocess: dict | None = None) -> Path:
    """A small model: the mean over channels (``ReduceMean``) or the input itself (``Identity``)."""
    import onnx
    from onnx import TensorProto, helper

    directory.mkdir(parents=True, exist_ok=True)
    names = [f"in{i}" for i in range(inputs)]
    if op == "ReduceMean":
        axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
        nodes = [helper.make_node("ReduceMean", ["in0", "axes"], ["out"], keepdims=1)]
        init = [axes]
    else:
        nodes = [helper.make_node(op, ["in0"], ["out"])]
        init = []
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, input_shape) for n in names],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, output_shape)],
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(directory / "model.onnx"))
    if preprocess is not None:
        (directory / "preprocess.json").write_text(json.dumps(preprocess))
    return directory


def test_defaults_are_rmbg_when_the_model_is_dynamic(tmp_path):
    d = write_model(tmp_path, [1, 3, "h", "w"], [1, 1, "h", "w"])
    model = SaliencyModel.load(d, device="cpu")
    assert model.preprocess.input_size == DEFAULT_INPUT_SIZE == (1024, 1024)
    assert model.preprocess.mean == (0.5, 0.5, 0.5) and model.preprocess.std == (1.0, 1.0, 1.0)


def test_a_fixed_model_size_is_the_default(tmp_path):
    d = write_model(tmp_path, ["batch", 3, 32, 48], ["batch", 1, 32, 48])
    assert SaliencyModel.load(d, device="cpu").preprocess.input_size == (32, 48)


@pytest.mark.parametrize(("output", "value"), [("identity", 128), ("sigmoid", 159)])
def test_output_normalisation(tmp_path, output, value):
    """White in: ReduceMean of (1 - 0.5) / 1 = 0.5 → identity 0.5, sigmoid(0.5) = 0.622."""
    d = write_model(tmp_path, [1, 3, "h", "w"], [1, 1, "h", "w"], preprocess={"input_size": [16, 16], "output": output})
    mask = SaliencyModel.load(d, device="cpu")(Image.new("RGB", (30, 20), (255, 255, 255)))
    assert mask.size == (30, 20)
    assert np.all(np.asarray(mask) == value)


def test_preprocess_mean_and_std_are_applied(tmp_path):
    d = write_model(tmp_path, [1, 3, "h", "w"], [1, 1, "h", "w"],
                    preprocess={"input_size": [8, 8], "mean": [0.0, 0.0, 0.0], "std": [2.0, 2.0, 2.0], "output": "identity"})
    mask = SaliencyModel.load(d, device="cpu")(Image.new("RGB", (10, 10), (255, 255, 255)))
    assert np.all(np.asarray(mask) == 128)  # 1.0 / 2.0


@pytest.mark.parametrize(("input_shape", "output_shape", "op", "inputs"), [
    ([1, 1, 16, 16], [1, 1, 16, 16], "ReduceMean", 1),  # one channel in
    ([1, 3, 16], [1, 1, 16], "ReduceMean", 1),  # rank 3
    ([2, 3, 16, 16], [2, 1, 16, 16], "ReduceMean", 1),  # batch of 2
    ([1, 3, 16, 16], [1, 3, 16, 16], "Identity", 1),  # output 3x16x16: no HxW
    (["n", "c", "h", "w"], ["n", "c", "h", "w"], "Identity", 1),  # declared symbolic; the probe sees 1x3xHxW
    ([1, 3, 16, 16], [1, 1, 16, 16], "ReduceMean", 2),  # two inputs
])
def test_bad_model_shapes_are_refused(tmp_path, input_shape, output_shape, op, inputs):
    d = write_model(tmp_path, input_shape, output_shape, op=op, inputs=inputs)
    with pytest.raises(ValueError, match="saliency model"):
        SaliencyModel.load(d, device="cpu")


@pytest.mark.parametrize("preprocess", [
    {"input_size": [16, 32]},  # the model is fixed at 16x16
    {"input_size": [0, 16]},
    {"input_size": [16]},
    {"std": [1.0, 0.0, 1.0]},
    {"mean": [0.5, 0.5]},
    {"output": "softmax"},
    {"unknown": 1},
])
def test_bad_preprocess_is_refused(tmp_path, preprocess):
    d = write_model(tmp_path, [1, 3, 16, 16], [1, 1, 16, 16], preprocess=preprocess)
    with pytest.raises(ValueError):
        SaliencyModel.load(d, device="cpu")


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        SaliencyModel.load(tmp_path)


def test_tiny_model_files(tiny_dir):
    assert sorted(p.name for p in tiny_dir.iterdir()) == ["model.onnx", "preprocess.json"]
    assert json.loads((tiny_dir / "preprocess.json").read_text())["input_size"] == [INPUT_SIZE, INPUT_SIZE]


def test_draw_subject_mask_is_where_the_red_is():
    image, mask = draw_subject((120, 90), (10, 20, 70, 80))
    pixels, inside = np.asarray(image).astype(int), np.asarray(mask) == 255
    assert set(np.unique(np.asarray(mask))) == {0, 255}
    redness = pixels[..., 0] - (pixels[..., 1] + pixels[..., 2]) / 2
    assert redness[inside].min() > 150 and redness[~inside].max() < -40
