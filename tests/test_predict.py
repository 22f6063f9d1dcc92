"""Drawing detections and predicting on image files.

References: the detections are hand-made, so which boxes, labels and mask
pixels must be drawn is known exactly; written PNGs are opened with Pillow.
"""

import io

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

import minifpn
from minifpn.engine.predict import collect_image_paths, draw_predictions, predict_images
from minifpn.models import MaskRCNN, detector_parts, resnet_fpn_backbone

CLASS_NAMES = ["__background__", "cat", "dog", "bird"]


def hand_made_output(height=60, width=80):
    masks = np.zeros((3, 1, height, width), np.float32)
    masks[0, 0, 5:20, 10:30] = 0.9  # kept (score 0.9)
    masks[1, 0, 30:50, 40:70] = 0.8  # dropped (score 0.3)
    masks[2, 0, 25:40, 5:25] = 0.7  # kept (score 0.6)
    masks[2, 0, 0:2, 0:2] = 0.4  # under 0.5: not part of the mask
    return {
        "boxes": np.array([[10, 5, 30, 20], [40, 30, 70, 50], [5, 25, 25, 40]], np.float32),
        "labels": np.array([1, 2, 3]),
        "scores": np.array([0.9, 0.3, 0.6], np.float32),
        "masks": masks,
    }


def rectangles(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_draw_predictions_draws_only_detections_above_threshold():
    image = np.full((60, 80, 3), 128, np.uint8)
    output = hand_made_output()
    fig = draw_predictions(image, output, CLASS_NAMES, score_threshold=0.5)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    boxes = rectangles(ax)
    assert len(boxes) == 2
    assert sorted((b.get_x(), b.get_y(), b.get_width(), b.get_height()) for b in boxes) == [
        (5, 25, 20, 15), (10, 5, 20, 15)]
    assert {b.get_edgecolor() for b in boxes}.__len__() == 2  # distinct colours
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["bird 0.60", "cat 0.90"]
    # the mask overlay: tinted exactly where a kept detection's mask is > 0.5
    image_artist, overlay_artist = ax.images
    overlay = np.asarray(overlay_artist.get_array())
    assert overlay.shape == (60, 80, 4)
    expected = np.zeros((60, 80), bool)
    expected[5:20, 10:30] = expected[25:40, 5:25] = True
    np.testing.assert_array_equal(overlay[..., 3] > 0, expected)
    assert 0 < overlay[..., 3].max() < 255  # semi-transparent (uint8 RGBA)
    assert not np.allclose(overlay[10, 15, :3], overlay[30, 10, :3])  # different colours
    fig.savefig(io.BytesIO(), format="png")  # renders without pyplot


def test_draw_predictions_threshold_none_and_all():
    image = np.zeros((60, 80, 3), np.uint8)
    fig = draw_predictions(image, hand_made_output(), CLASS_NAMES, score_threshold=0.95)
    (ax,) = fig.axes
    assert rectangles(ax) == [] and len(ax.texts) == 0 and len(ax.images) == 1
    fig = draw_predictions(image, hand_made_output(), CLASS_NAMES, score_threshold=0.0)
    assert len(rectangles(fig.axes[0])) == 3
    assert "dog 0.30" in [t.get_text() for t in fig.axes[0].texts]


def test_draw_predictions_into_given_axes_without_masks():
    fig = Figure()
    ax = fig.add_subplot()
    output = {k: v for k, v in hand_made_output().items() if k != "masks"}
    output["labels"] = np.array([1, 2, 7])  # 7: no name → "class 7"
    assert draw_predictions(np.zeros((60, 80, 3), np.uint8), output, CLASS_NAMES, 0.5, ax=ax) is fig
    assert len(rectangles(ax)) == 2 and len(ax.images) == 1
    assert sorted(t.get_text() for t in ax.texts) == ["cat 0.90", "class 7 0.60"]
    # Tensors are accepted as well as arrays
    tensors = {k: minifpn.Tensor(v) if k == "boxes" else v for k, v in output.items()}
    fig = draw_predictions(np.zeros((60, 80, 3), np.uint8), tensors, None)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["class 1 0.90", "class 7 0.60"]


def test_draw_predictions_rejects_a_bad_image():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        draw_predictions(np.zeros((3, 60, 80), np.uint8), hand_made_output(), CLASS_NAMES)


# ---------------------------------------------------------------------------
# predict_images
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_mask_rcnn():
    minifpn.manual_seed(0)
    backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=16)
    return MaskRCNN(backbone, min_size=64, max_size=96,
                    **detector_parts(16, 4, representation_size=32, mask_layers=(16,) * 4,
                                     mask_dim_reduced=16))


def write_image(path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_images_writes_one_png_per_image(tiny_mask_rcnn, tmp_path):
    wide = write_image(tmp_path / "wide.jpg", 40, 80)
    tall = write_image(tmp_path / "tall.png", 100, 50, seed=1)
    out_dir = tmp_path / "predictions"
    tiny_mask_rcnn.train()
    written = predict_images(tiny_mask_rcnn, [wide, str(tall)], CLASS_NAMES, out_dir,
                             score_threshold=0.0, progress=False)
    assert tiny_mask_rcnn.training  # restored
    assert written == [out_dir / "wide.png", out_dir / "tall.png"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["tall.png", "wide.png"]  # no temp files
    for path, (h, w) in zip(written, [(40, 80), (100, 50)]):
        with Image.open(path) as picture:
            assert picture.format == "PNG"
            pw, ph = picture.size
        assert max(pw, ph) >= 600  # small images are enlarged for readable labels
        assert pw / ph == pytest.approx(w / h, rel=0.02)


def test_predict_images_folders_and_repeated_names(tiny_mask_rcnn, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_image(tmp_path / "a" / "x.png", 30, 40)
    write_image(tmp_path / "a" / "y.jpg", 30, 40)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "b" / "x.png", 30, 40)
    assert [p.name for p in collect_image_paths(tmp_path / "a")] == ["x.png", "y.jpg"]
    written = predict_images(tiny_mask_rcnn, [tmp_path / "a", tmp_path / "b" / "x.png"],
                             CLASS_NAMES, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["x.png", "y.png", "x_2.png"]
    with pytest.raises(ValueError, match="no images"):
        collect_image_paths(tmp_path / "out" / "..")  # a folder with only folders in it


def test_predict_images_missing_file_is_a_clear_error(tiny_mask_rcnn, tmp_path):
    good = write_image(tmp_path / "good.png", 30, 40)
    out_dir = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predict_images(tiny_mask_rcnn, [good, tmp_path / "missing.jpg"], CLASS_NAMES, out_dir,
                       progress=False)
    assert not out_dir.exists()  # checked before anything ran or was written


def test_predict_images_corrupt_file_is_a_clear_error(tiny_mask_rcnn, tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"this is not a JPEG")
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="broken.jpg"):
        predict_images(tiny_mask_rcnn, [corrupt], CLASS_NAMES, out_dir, progress=False)
    assert not out_dir.exists()  # its header was checked before anything ran


def test_predict_images_truncated_pixels_write_nothing_for_that_image(tiny_mask_rcnn, tmp_path):
    good = write_image(tmp_path / "good.png", 30, 40)
    whole = write_image(tmp_path / "whole.png", 300, 400).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])  # the header is fine, the pixels are not
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="truncated.png"):
        predict_images(tiny_mask_rcnn, [good, truncated], CLASS_NAMES, out_dir, progress=False)
    assert sorted(p.name for p in out_dir.iterdir()) == ["good.png"]  # and no temp file


def test_predict_images_never_overwrites_an_existing_file(tiny_mask_rcnn, tmp_path):
    # inputs x.jpg and x.png in one folder, --out that folder, and a file of the user's there
    jpg, png = write_image(tmp_path / "x.jpg", 30, 40), write_image(tmp_path / "x.png", 30, 40)
    notes = tmp_path / "y.png"
    notes.write_bytes(b"the user's own file")
    y = write_image(tmp_path / "sub-y.png", 30, 40)
    before = {p: p.read_bytes() for p in (jpg, png, notes)}
    y = y.rename(tmp_path / "y.jpg")
    written = predict_images(tiny_mask_rcnn, [jpg, png, y], CLASS_NAMES, tmp_path,
                             progress=False)
    assert [p.name for p in written] == ["x_2.png", "x_3.png", "y_2.png"]
    assert {p: p.read_bytes() for p in before} == before  # untouched
    for path in written:
        with Image.open(path) as picture:
            assert picture.format == "PNG"


@pytest.fixture(scope="module")
def many_detections():
    """A Mask R-CNN that keeps every detection (score threshold 0), up to ``detections``."""
    def make(detections):
        minifpn.manual_seed(0)
        backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=16)
        return MaskRCNN(backbone, min_size=64, max_size=96, box_score_thresh=0.0,
                        box_detections_per_img=detections, rpn_pre_nms_top_n_test=100,
                        rpn_post_nms_top_n_test=100,
                        **detector_parts(16, 4, representation_size=32, mask_layers=(16,) * 4,
                                         mask_dim_reduced=16))
    return make


def test_predict_memory_does_not_grow_with_the_detections(many_detections, tmp_path):
    # 100 full-image float masks of a 600 × 800 image would be 190 MB; pasted a few at a
    # time into one uint8 overlay, the peak for 100 detections exceeds the one for 2 by
    # at most the paste buffers (PASTE_PIXELS float32 maps, and their product).
    import tracemalloc

    from minifpn.engine.predict import PASTE_PIXELS

    image = write_image(tmp_path / "photo.png", 600, 800)
    peaks = {}
    for detections in (2, 100):
        model = many_detections(detections)
        tracemalloc.start()
        try:
            (picture,) = predict_images(model, [image], CLASS_NAMES, tmp_path / f"{detections}",
                                        score_threshold=0.0, progress=False)
            peaks[detections] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert model.paste_masks  # restored
    assert peaks[100] - peaks[2] < 3 * 4 * PASTE_PIXELS < 100 * 600 * 800 * 4, peaks


@pytest.mark.parametrize("size", [(400, 1), (2000, 3), (1, 1), (3, 2000)])
def test_predict_degenerate_image_sizes(tiny_mask_rcnn, tmp_path, size):
    image = write_image(tmp_path / "thin.png", *size)
    (picture,) = predict_images(tiny_mask_rcnn, [image], CLASS_NAMES, tmp_path / "out",
                                score_threshold=0.0, progress=False)
    with Image.open(picture) as drawn:
        assert drawn.format == "PNG" and max(drawn.size) >= 600


def test_predict_reads_a_large_image_at_picture_size(tiny_mask_rcnn, tmp_path):
    from minifpn.data.images import read_image
    from minifpn.engine.predict import MAX_LONG_SIDE

    big = tmp_path / "big.jpg"
    gradient = np.linspace(0, 255, 4000, dtype=np.uint8)
    Image.fromarray(np.stack(np.broadcast_arrays(gradient[None, :], gradient[:3000, None],
                                                 np.uint8(128)), axis=2)).save(big)
    reduced = read_image(big, max_side=MAX_LONG_SIDE)
    assert reduced.shape == (1200, 1600, 3)
    full = read_image(big)
    # the reduced image is the full one, smaller: compare at a coarse scale
    coarse = full.reshape(300, 10, 400, 10, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(reduced.reshape(300, 4, 400, 4, 3).mean(axis=(1, 3)), coarse,
                               atol=3)
    (picture,) = predict_images(tiny_mask_rcnn, [big], CLASS_NAMES, tmp_path / "out",
                                progress=False)
    with Image.open(picture) as drawn:
        assert drawn.size == (1600, 1200)


def test_predict_a_named_pipe_is_refused_not_read(tiny_mask_rcnn, tmp_path):
    import os

    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)  # opening it for reading would block forever
    with pytest.raises(ValueError, match="named pipe"):
        predict_images(tiny_mask_rcnn, [pipe], CLASS_NAMES, tmp_path / "out", progress=False)
