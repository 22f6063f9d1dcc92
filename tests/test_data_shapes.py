"""The synthetic shapes dataset, its cache, and ``minifpn data shapes``.

References are independent of the generator:

* polygons rasterised here with matplotlib (a pixel belongs to a polygon when
  its centre ``(x + 0.5, y + 0.5)`` is inside), compared with the pixels of
  the PNG painted in the object's colour;
* sizes checked against the log-uniform law between 8 and 250 px (the
  fraction under 16 px is ln 2 / ln 31.25 ≈ 0.20, the median √(8·250) ≈ 45),
  loosely, since a 256-px image has room for only one or two big objects;
* determinism by comparing the bytes of every file written.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath
from PIL import Image

from minifpn.data import DataError
from minifpn.data import shapes as shapes_module
from minifpn.data.cli import add_data_commands
from minifpn.data.coco import CocoDetection
from minifpn.data.shapes import MARKER, generate_shapes, shapes_root

SIZE = 256


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    assert generate_shapes(root, num_train=100, num_val=10, seed=0, image_size=SIZE,
                           progress=False) == root
    return root


def load(root, split="train"):
    with open(root / "annotations" / f"instances_{split}.json") as f:
        return json.load(f)


def all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file()}


def test_layout_and_classes(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == sorted(
        [".minifpn-shapes.json", "annotations", "train", "val"])
    train, val = load(dataset), load(dataset, "val")
    assert len(train["images"]) == 100 and len(val["images"]) == 10
    assert len(list((dataset / "train").glob("*.png"))) == 100
    names = {c["id"]: c["name"] for c in train["categories"]}
    assert sorted(names.values()) == ["circle", "square", "triangle"]
    used = {a["category_id"] for a in train["annotations"]}
    assert used == set(names)  # every class appears
    ids = [im["id"] for im in train["images"] + val["images"]]
    assert len(set(ids)) == 110  # unique across the splits
    per_image = np.bincount([a["image_id"] for a in train["annotations"]], minlength=101)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 6


def test_annotations_inside_the_image_and_consistent(dataset):
    from pycocotools import mask as mask_utils

    for a in load(dataset)["annotations"]:
        assert a["iscrowd"] == 0 and len(a["segmentation"]) == 1
        xy = np.array(a["segmentation"][0]).reshape(-1, 2)
        assert len(xy) in (3, 4) or 32 <= len(xy) <= 64  # triangle, square, circle
        assert (xy >= 0).all() and (xy <= SIZE).all()
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE and w >= 1 and h >= 1
        # the bbox is the polygon's pixels' box: within the polygon's extent, short of
        # it by at most the sub-pixel tips of the sharpest (60°) corners
        assert xy[:, 0].min() - 1 <= x <= xy[:, 0].min() + 2.5
        assert xy[:, 0].max() - 2.5 <= x + w <= xy[:, 0].max() + 1
        assert xy[:, 1].min() - 1 <= y <= xy[:, 1].min() + 2.5
        assert xy[:, 1].max() - 2.5 <= y + h <= xy[:, 1].max() + 1
        rle = mask_utils.frPyObjects(a["segmentation"], SIZE, SIZE)[0]
        assert a["area"] == mask_utils.area(rle)


def test_sizes_spread_log_uniformly(dataset):
    sizes = np.array([max(a["bbox"][2:]) for a in load(dataset)["annotations"]])
    assert len(sizes) > 250
    assert sizes.min() <= 10 and sizes.max() >= 200
    assert 0.1 < (sizes < 16).mean() < 0.35  # log-uniform: 0.20
    assert 0.07 < (sizes > 128).mean() < 0.3  # log-uniform: 0.19
    assert 22 < np.median(sizes) < 70  # log-uniform: 45
    areas = np.array([a["area"] for a in load(dataset)["annotations"]])
    for low, high in ((0, 32**2), (32**2, 96**2), (96**2, SIZE**2 + 1)):  # COCO small/medium/large
        assert ((areas >= low) & (areas < high)).mean() > 0.1


def test_polygons_match_the_painted_pixels(dataset):
    data = load(dataset)
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    ious = []
    for im in data["images"][:40]:
        pixels = np.asarray(Image.open(dataset / "train" / im["file_name"]).convert("RGB"))
        assert pixels.shape == (SIZE, SIZE, 3)
        for a in by_image[im["id"]]:
            polygon = np.array(a["segmentation"][0]).reshape(-1, 2)
            inside = PolygonPath(polygon).contains_points(centres).reshape(SIZE, SIZE)
            painted = (pixels == np.array(a["color"], np.uint8)).all(axis=-1)
            iou = (inside & painted).sum() / (inside | painted).sum()
            ious.append(iou)
            if inside.sum() >= 50:  # below that, single boundary pixels weigh too much
                assert iou > 0.9, (im["id"], a["id"], iou)
    assert np.mean(ious) > 0.95


def test_coco_detection_reads_it(dataset):
    ds = CocoDetection(dataset, "train", skip_empty=True, with_masks=True, verbose=False)
    assert len(ds) == 100 and ds.class_names == ["__background__", "circle", "square", "triangle"]
    assert ds.report.degenerate_ids == [] and ds.report.clipped_ids == []
    image, target = ds[3]
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert target["masks"].shape[0] == len(target["boxes"]) >= 1
    for mask, box in zip(target["masks"], target["boxes"]):
        rows, cols = np.nonzero(mask)
        assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == box.tolist()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_shapes(tmp_path / "a", 5, 2, seed=3, progress=False)
    b = generate_shapes(tmp_path / "b", 5, 2, seed=3, progress=False, workers=1)
    c = generate_shapes(tmp_path / "c", 5, 2, seed=4, progress=False)
    files_a, files_b, files_c = all_files(a), all_files(b), all_files(c)
    assert len(files_a) == 2 + 5 + 2 + 1  # two jsons, seven images, the marker
    assert files_a == files_b
    assert files_a.keys() == files_c.keys()
    differ = [name for name in files_a if files_a[name] != files_c[name]]
    assert len(differ) >= 9  # every image and json (the marker holds the seed too)


def test_refuses_a_non_empty_folder_and_overwrites_on_request(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="is not empty.*overwrite"):
        generate_shapes(out, 2, 1, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    generate_shapes(out, 2, 1, overwrite=True, progress=False)
    assert not (out / "notes.txt").exists() and (out / MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folders left
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_shapes(empty, 1, 1, progress=False)  # an empty folder is fine
    assert (empty / "annotations" / "instances_val.json").is_file()


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_leaves_nothing_half_written(tmp_path, monkeypatch, error):
    render, calls = shapes_module._render, []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise error
        return render(*args, **kwargs)

    monkeypatch.setattr(shapes_module, "_render", failing_render)
    with pytest.raises(type(error)):
        generate_shapes(tmp_path / "out", 6, 2, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []
    previous = tmp_path / "previous"  # an existing dataset survives a failed overwrite
    monkeypatch.setattr(shapes_module, "_render", render)
    generate_shapes(previous, 1, 1, progress=False)
    before = all_files(previous)
    calls.clear()
    monkeypatch.setattr(shapes_module, "_render", failing_render)
    with pytest.raises(type(error)):
        generate_shapes(previous, 6, 2, overwrite=True, progress=False, workers=1)
    assert all_files(previous) == before
    assert [p.name for p in tmp_path.iterdir()] == ["previous"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_train"):
        generate_shapes("/nonexistent/x", num_train=-1)
    with pytest.raises(ValueError, match="nothing to generate"):
        generate_shapes("/nonexistent/x", num_train=0, num_val=0)
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes("/nonexistent/x", image_size=8)


def test_shapes_root_generates_once_and_reuses(tmp_path, monkeypatch, capsys):
    root = shapes_root(tmp_path, num_train=3, num_val=2, progress=False)
    assert root == tmp_path / "shapes-v1-seed0-3x2-256px"
    assert (root / MARKER).is_file() and len(load(root)["images"]) == 3
    before = all_files(root)

    def no_generation(*args, **kwargs):
        raise AssertionError("regenerated a complete cache")

    monkeypatch.setattr(shapes_module, "generate_shapes", no_generation)
    assert shapes_root(tmp_path, num_train=3, num_val=2, progress=False) == root
    monkeypatch.undo()
    (root / MARKER).unlink()  # an incomplete folder is replaced
    assert shapes_root(tmp_path, num_train=3, num_val=2, progress=False) == root
    assert all_files(root) == before
    # the default location: $MINIFPN_CACHE/shapes-v1-seed0 for the default sizes
    monkeypatch.setenv("MINIFPN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shapes_module, "DEFAULTS", {"num_train": 3, "num_val": 2, "seed": 0,
                                                    "image_size": 256})
    root = shapes_module.shapes_root(num_train=3, num_val=2, progress=False)
    assert root == tmp_path / "cache" / "shapes-v1-seed0"


def test_cli_data_shapes(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="minifpn")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "s"
    args = parser.parse_args(["data", "shapes", "--out", str(out), "--num-train", "4",
                              "--num-val", "2", "--seed", "1", "--image-size", "128",
                              "--quiet"])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    train = load(out)
    assert f"train: 4 images, {len(train['annotations'])} objects" in printed
    assert "val: 2 images" in printed and str(out) in printed
    assert train["images"][0]["width"] == 128
    assert Image.open(out / "train" / train["images"][0]["file_name"]).size == (128, 128)
    sizes = [max(a["bbox"][2:]) for a in train["annotations"]]
    assert max(sizes) <= 126  # objects capped at the image size less 2 px
    with pytest.raises(DataError, match="not empty"):
        args.run(args)
    args = parser.parse_args(["data", "shapes", "--out", str(out), "--num-train", "1",
                              "--num-val", "1", "--overwrite", "--quiet"])
    assert args.run(args) == 0 and len(load(out)["images"]) == 1
    assert math.isclose(json.loads((out / MARKER).read_text())["seed"], 0)
