"""Image files and annotations that must be refused or read right (``minifpn.data.images``).

* paths: a ``file_name`` may not lead outside the image folder, in training
  (``CocoDetection``) or in ``data subset`` (reading or writing);
* the up-front check (``CocoDetection.check_images``): every bad file at
  once, from headers only;
* pixel formats: 16-bit and floating-point images scaled to 8 bits (values
  worked out by hand), every Pillow mode to ``(H, W, 3)`` uint8;
* things that are not images: a named pipe (which would block a reader
  forever), a decompression bomb;
* annotations: JSON nested too deeply, a non-numeric area, an infinite box.
"""

import json
import os
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from minifpn.data import DataError
from minifpn.data.coco import CocoDetection
from minifpn.data.images import _to_rgb8, image_file, image_header, read_image
from minifpn.data.subset import make_subset
from tests.test_data_coco import H, W, crafted_annotations, write_crafted


# ---------------------------------------------------------------------------
# file names stay inside the image folder
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a.png", "sub/a.png", "./a.png", "a..b.png", "..a.png"])
def test_image_file_accepts_names_inside_the_folder(tmp_path, name):
    assert image_file(tmp_path, name) == tmp_path / name


@pytest.mark.parametrize("name, problem", [
    ("../a.png", "climbs out"), ("sub/../../a.png", "climbs out"), ("/etc/passwd", "absolute"),
    ("C:\\images\\a.png", "absolute"), ("", "not a file name"), (".", "folder itself"),
    ("a\0b.png", "NUL"), (7, "not a file name"),
])
def test_image_file_refuses_names_that_leave_the_folder(tmp_path, name, problem):
    with pytest.raises(DataError, match=problem):
        image_file(tmp_path, name)


def test_training_never_reads_an_image_outside_the_dataset(tmp_path):
    root = tmp_path / "data"
    write_crafted(root)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "elsewhere.png")
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    names = {10: "../../elsewhere.png", 20: str(tmp_path / "elsewhere.png"),
             30: "ok/../../../elsewhere.png"}
    for image in data["images"]:
        image["file_name"] = names.get(image["id"], image["file_name"])
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        CocoDetection(root, "val", verbose=False)
    message = str(info.value)
    assert "3 image file name(s) would read outside the image folder" in message
    for image_id, name in names.items():
        assert f"image id {image_id}: file_name {name!r}" in message


@pytest.mark.parametrize("link", [True, False])
def test_data_subset_only_reads_and_writes_inside_its_folders(tmp_path, link):
    from tests.test_data_coco import FULL_CATEGORIES

    coco = tmp_path / "in" / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").mkdir()
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(coco / "val2017" / "good.jpg")
    # "../../../escape.jpg" reads tmp_path/escape.jpg (from coco/val2017/) and, built in
    # o/p/.sub.<random>.partial/val/, would write o/escape.jpg — a file of the user's
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "escape.jpg")
    (tmp_path / "o").mkdir()
    victim = tmp_path / "o" / "escape.jpg"
    victim.write_bytes(b"the user's file")
    images = [{"id": 1, "file_name": "good.jpg", "width": 20, "height": 10},
              {"id": 2, "file_name": "../../../escape.jpg", "width": 20, "height": 10}]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5],
                    "area": 25, "iscrowd": 0} for i in (1, 2)]
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": FULL_CATEGORIES}))
    with pytest.raises(DataError, match=r"image id 2: file_name '../../../escape.jpg' climbs"):
        make_subset(coco, categories="person", out=tmp_path / "o" / "p" / "sub", link=link,
                    progress=False)
    assert victim.read_bytes() == b"the user's file"
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["escape.jpg"]  # nothing new


# ---------------------------------------------------------------------------
# the up-front check: every bad file at once, headers only
# ---------------------------------------------------------------------------
def open_pipe_writer_for(pipe, seconds=5.0):
    """If anything opens ``pipe`` for reading, give it end-of-file (so no test can hang)."""
    def writer():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.02)

    threading.Thread(target=writer, daemon=True).start()


def test_check_images_reports_every_bad_file_at_once_without_decoding(tmp_path, monkeypatch):
    write_crafted(tmp_path)
    folder = tmp_path / "val"
    os.remove(folder / "000000000010.png")  # missing
    (folder / "000000000020.png").write_bytes(b"not an image")  # corrupt
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(folder / "000000000030.png")
    os.remove(folder / "000000000040.png")
    os.mkfifo(folder / "000000000040.png")  # a named pipe
    open_pipe_writer_for(folder / "000000000040.png")
    dataset = CocoDetection(tmp_path, "val", verbose=False)

    def no_decoding(*args, **kwargs):
        raise AssertionError("check_images must not decode pixels")

    monkeypatch.setattr("minifpn.data.coco.read_image", no_decoding)
    with pytest.raises(DataError) as info:
        dataset.check_images()
    message = str(info.value)
    assert message.startswith("4 of the 4 val images checked are not usable")
    assert "image id 10: no such image file" in message
    assert "image id 20: cannot read image" in message
    assert "image id 30: " in message and "decodes to 40×31" in message
    assert "image id 40: " in message and "is a named pipe" in message


def test_check_images_passes_good_data_and_counts_only_what_is_used(tmp_path):
    write_crafted(tmp_path)
    dataset = CocoDetection(tmp_path, "val", verbose=False)
    dataset.check_images()
    os.remove(tmp_path / "val" / f"{dataset.ids[-1]:012d}.png")
    dataset.check_images(count=len(dataset) - 1)  # the missing one is not among them
    with pytest.raises(FileNotFoundError, match="1 of the 4 val images"):
        dataset.check_images()


# ---------------------------------------------------------------------------
# pixel formats
# ---------------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC (the PNG specification, section 5.3)."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png16_rgb(path, pixels):
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].astype(">u2").tobytes() for r in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
                     + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def test_a_16_bit_grey_png_is_scaled_not_saturated(tmp_path):
    # 16-bit values v → round(v / 257): 257 → 1, 32896 → 128, 65535 → 255
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode.startswith("I")  # Pillow keeps the 16 bits
    got = read_image(tmp_path / "grey16.png")
    assert got.dtype == np.uint8 and got.shape == (1, 4, 3)
    np.testing.assert_array_equal(got[..., 0], [[0, 1, 128, 255]])
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_a_16_bit_rgb_png_keeps_its_colours(tmp_path):
    pixels = np.array([[[65535, 0, 257 * 100], [257 * 10, 257 * 20, 257 * 30]]], np.uint16)
    write_png16_rgb(tmp_path / "rgb16.png", pixels)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png"),
                                  [[[255, 0, 100], [10, 20, 30]]])


def test_a_float_image_is_read_as_intensities_in_0_1(tmp_path):
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[..., 1], [[0, 64, 255]])
    Image.fromarray(np.array([[0.0, 3.0, 200.0]], np.float32)).save(tmp_path / "bad.tif")
    with pytest.raises(DataError, match=r"bad\.tif.*'F' pixels range over 0\.0\.\.200\.0"):
        read_image(tmp_path / "bad.tif")


@pytest.mark.parametrize("mode", Image.MODES)
def test_every_pillow_mode_becomes_8_bit_rgb(mode):
    image = Image.new(mode, (3, 2))
    rgb = np.asarray(_to_rgb8(image, "x"))
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8


# ---------------------------------------------------------------------------
# things that are not images
# ---------------------------------------------------------------------------
def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    open_pipe_writer_for(pipe)
    for read in (read_image, image_header):
        with pytest.raises(DataError, match=r"pipe\.png is a named pipe, not an image file"):
            read(pipe)


def test_a_decompression_bomb_is_one_clear_error(tmp_path):
    bomb = tmp_path / "bomb.png"  # a header claiming 20000 × 20000 pixels
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"")
                     + png_chunk(b"IEND", b""))
    with pytest.raises(DataError, match=r"bomb\.png is larger than Pillow's safety limit"):
        read_image(bomb)


# ---------------------------------------------------------------------------
# annotations
# ---------------------------------------------------------------------------
def test_json_nested_too_deeply_names_the_file(tmp_path):
    write_crafted(tmp_path, files=False)
    path = tmp_path / "annotations" / "instances_val.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DataError, match=r"instances_val\.json is nested too deeply"):
        CocoDetection(tmp_path, "val")


@pytest.mark.parametrize("field, value, problem", [
    ("area", "12", "has area '12'"),
    ("bbox", [1, 2, float("inf"), 4], r"has bbox \[1, 2, inf, 4\]"),
    ("bbox", [1, float("nan"), 3, 4], r"has bbox \[1, nan, 3, 4\]"),
    ("area", -1, "has area -1"),
])
def test_non_numeric_or_infinite_annotation_values_are_refused(tmp_path, field, value, problem):
    annotations = crafted_annotations()
    annotations[3][field] = value  # annotation 104 of image 20
    path = write_crafted(tmp_path, annotations=annotations, files=False)
    with pytest.raises(DataError, match=rf"{path}: annotation id 104 \(image id 20\) {problem}"):
        CocoDetection(tmp_path, "val", verbose=False)
