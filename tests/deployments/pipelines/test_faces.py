"""Face detection and identity embeddings through insightface 2.1 on the tiny face pack (CPU, offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deployments.errors import InvalidJobError, NoFaceDetected
from deployments.pipelines import faces as faces_module
from deployments.pipelines.faces import FaceAnalyzer
from deployments.pipelines.tiny_faces import DETECTOR_FILE, RECOGNIZER_FILE, draw_faces, write_tiny_face_pack

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # skimage, inside insightface


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return write_tiny_face_pack(tmp_path_factory.mktemp("face-pack"))


@pytest.fixture(scope="module")
def analyzer(pack):
    return FaceAnalyzer.load(str(pack), device="cpu")


def _near(bbox, expected, tolerance):
    return all(abs(a - b) <= tolerance for a, b in zip(bbox, expected))


def _disk_box(cx, cy, r):
    return [cx - r, cy - r, cx + r + 1, cy + r + 1]  # PIL's ellipse covers both bounds


def test_pack_is_a_legacy_onnx_directory_routed_by_insightface(pack, analyzer):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    assert sorted(p.name for p in pack.iterdir()) == sorted([DETECTOR_FILE, RECOGNIZER_FILE])  # no manifest.json
    models = analyzer.app.models
    assert set(models) == {"detection", "recognition"}
    detector, recognizer = models["detection"], models["recognition"]
    assert isinstance(detector, SCRFD) and detector.use_kps and detector._feat_stride_fpn == [8, 16, 32]
    assert detector._num_anchors == 2 and not detector.batched
    assert detector.det_thresh == 0.5 and detector.input_size == (640, 640)
    assert isinstance(recognizer, ArcFaceONNX)
    assert recognizer.input_size == (112, 112) and (recognizer.input_mean, recognizer.input_std) == (127.5, 127.5)
    assert analyzer.embedding_dim == 512


def test_loads_offline_and_never_downloads(pack, monkeypatch):
    import insightface.app.face_analysis as face_analysis

    def no_download(*args, **kwargs):
        raise AssertionError("insightface tried to download a model pack")

    monkeypatch.setattr(face_analysis, "ensure_available", no_download)
    analyzer = FaceAnalyzer.load(str(pack), device="cpu", det_size=(320, 320), det_thresh=0.6)
    assert analyzer.app.det_model.input_size == (320, 320) and analyzer.app.det_model.det_thresh == 0.6
    with pytest.raises(FileNotFoundError):
        FaceAnalyzer.load(str(pack / "missing"), device="cpu")  # a missing directory is never taken as a pack name


def test_sessions_run_on_the_cpu_here(analyzer):
    from deployments.pipelines.onnx_runtime import providers

    assert providers("auto") == ["CPUExecutionProvider"]  # this CI box has no GPU
    assert analyzer.providers == ["CPUExecutionProvider"]
    for model in analyzer.app.models.values():
        assert model.session.get_providers() == ["CPUExecutionProvider"]


def test_bad_settings_are_refused(pack):
    with pytest.raises(ValueError, match="multiples of 32"):
        FaceAnalyzer.load(str(pack), device="cpu", det_size=(100, 100))
    with pytest.raises(ValueError, match="det_thresh"):
        FaceAnalyzer.load(str(pack), device="cpu", det_thresh=1.5)


def test_one_face_is_found_on_the_disk(analyzer):
    face = analyzer.largest(draw_faces((900, 600), [(600, 300, 100)]))  # not det_size: boxes come back in input pixels
    assert face.faces == 1 and face.score > 0.5
    assert all(isinstance(v, int) for v in face.bbox)
    assert _near(face.bbox, _disk_box(600, 300, 100), 6), face.bbox
    assert face.embedding.dtype == np.float32 and face.embedding.shape == (512,)
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)


def test_the_box_grows_with_the_face(analyzer):
    widths = [analyzer.largest(draw_faces((640, 480), [(320, 240, r)])).bbox for r in (20, 45, 100, 180)]
    sides = [b[2] - b[0] for b in widths]
    assert sides == sorted(sides)
    for side, r in zip(sides, (20, 45, 100, 180)):
        assert abs(side - 2 * r) <= 0.1 * 2 * r + 2, (side, r)


@pytest.mark.parametrize("image", [
    Image.new("RGB", (400, 300), (46, 64, 94)),
    Image.new("RGB", (400, 300), (240, 190, 160)),  # a skin-toned wall: no face either
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)),
], ids=["plain", "skin-wall", "noise"])
def test_no_face_is_a_422_of_its_own_type(analyzer, image):
    with pytest.raises(NoFaceDetected) as err:
        analyzer.largest(image)
    assert err.value.error_type == "NoFaceDetected" and err.value.field == "image"
    assert "no face" in err.value.public
    assert analyzer.detect(image) == []


def test_several_faces_use_the_largest(analyzer):
    image = draw_faces((640, 480), [(110, 110, 40, 1), (420, 280, 90, 2), (560, 80, 25, 3)])
    face = analyzer.largest(image)
    assert face.faces == 3
    assert _near(face.bbox, _disk_box(420, 280, 90), 6), face.bbox
    meta = face.meta()
    assert meta == {"bbox": face.bbox, "score": meta["score"], "faces_detected": 3}
    json.dumps(meta)  # plain JSON for the result's meta
    assert face.public() == meta
    alone = analyzer.largest(draw_faces((640, 480), [(420, 280, 90, 2)]))
    assert float(face.embedding @ alone.embedding) > 0.99  # it is that face's identity


def test_embeddings_tell_faces_apart(analyzer):
    a = analyzer.largest(draw_faces((640, 480), [(200, 200, 80, 1)])).embedding
    again = analyzer.largest(draw_faces((640, 480), [(200, 200, 80, 1)])).embedding
    moved = analyzer.largest(draw_faces((640, 480), [(420, 260, 60, 1)])).embedding
    other = analyzer.largest(draw_faces((640, 480), [(200, 200, 80, 2)])).embedding
    np.testing.assert_array_equal(a, again)  # deterministic
    assert float(a @ moved) > 0.99  # the same identity, moved and smaller (aligned on its keypoints)
    assert float(a @ other) < 0.97  # another identity


def test_oversized_images_are_refused(analyzer, monkeypatch):
    monkeypatch.setattr(faces_module, "MAX_INPUT_PIXELS", 1000)
    with pytest.raises(InvalidJobError) as err:
        analyzer.largest(draw_faces((64, 64), [(32, 32, 20)]))
    assert err.value.field == "image"
