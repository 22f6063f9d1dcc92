"""minifpn.save / minifpn.load: state dicts and nested checkpoints as .npz.

References: plain ``numpy.load`` (the file must be an ordinary .npz with the
state-dict keys), the original Python objects, and the file's bytes before a
failed save.
"""

import os

import numpy as np
import pytest

import minifpn
from minifpn import nn, serialization


def small_model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)
    )


def test_state_dict_round_trip(tmp_path):
    minifpn.manual_seed(0)
    model = small_model()
    model[1].running_mean[:] = [1.0, 2.0, 3.0, 4.0]
    model[1].num_batches_tracked[...] = 42
    sd = model.state_dict()
    path = tmp_path / "model.npz"
    minifpn.save(sd, path)
    loaded = minifpn.load(path)

    assert list(loaded) == list(sd)
    for key, value in sd.items():
        assert isinstance(loaded[key], np.ndarray)
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        np.testing.assert_array_equal(loaded[key], value)
    assert loaded["1.num_batches_tracked"].dtype == np.int64

    minifpn.manual_seed(1)
    fresh = small_model()
    fresh.load_state_dict(loaded)
    x = minifpn.Tensor(np.random.default_rng(0).standard_normal((2, 3, 3, 3)).astype(np.float32))
    model.eval(), fresh.eval()
    np.testing.assert_array_equal(model(x).numpy(), fresh(x).numpy())


def test_file_is_a_plain_npz_with_the_state_dict_keys(tmp_path):
    sd = small_model().state_dict()
    path = tmp_path / "plain.npz"
    minifpn.save(sd, path)
    with np.load(path, allow_pickle=False) as f:
        assert set(sd) <= set(f.files)
        for key, value in sd.items():
            np.testing.assert_array_equal(f[key], value)


def test_nested_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    checkpoint = {
        "model": {"conv.weight": rng.standard_normal((2, 1, 3, 3)).astype(np.float32)},
        "optimizer": {
            "state": {"0": {"momentum_buffer": rng.standard_normal(4)}},
            "param_groups": [{"lr": 0.02, "nesterov": False, "params": [0, 1]}],
        },
        "iteration": 1234,
        "loss": 0.125,
        "name": "fpn-r50",
        "milestones": [10, 20],
        "nothing": None,
        "tensor": minifpn.Tensor(np.arange(3.0)),
        "numpy_scalar": np.float64(2.5),
        "arrays_in_a_list": [np.arange(4, dtype=np.int32), np.eye(2)],
        "empty": {},
    }
    path = tmp_path / "ckpt.npz"
    minifpn.save(checkpoint, path)
    loaded = minifpn.load(path)

    assert loaded["iteration"] == 1234 and isinstance(loaded["iteration"], int)
    assert loaded["loss"] == 0.125 and loaded["name"] == "fpn-r50"
    assert loaded["milestones"] == [10, 20] and loaded["nothing"] is None
    assert loaded["numpy_scalar"] == 2.5 and loaded["empty"] == {}
    assert loaded["optimizer"]["param_groups"] == [
        {"lr": 0.02, "nesterov": False, "params": [0, 1]}
    ]
    np.testing.assert_array_equal(
        loaded["optimizer"]["state"]["0"]["momentum_buffer"],
        checkpoint["optimizer"]["state"]["0"]["momentum_buffer"],
    )
    np.testing.assert_array_equal(
        loaded["model"]["conv.weight"], checkpoint["model"]["conv.weight"]
    )
    assert loaded["model"]["conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(loaded["tensor"], np.arange(3.0))
    assert loaded["arrays_in_a_list"][0].dtype == np.int32
    np.testing.assert_array_equal(loaded["arrays_in_a_list"][1], np.eye(2))
    with np.load(path) as f:  # nested arrays are plain npz members too
        assert "model/conv.weight" in f.files


def _snapshot(folder):
    return sorted(os.listdir(folder))


def test_failed_save_leaves_the_old_file_and_no_temporary_files(tmp_path):
    path = tmp_path / "ckpt.npz"
    minifpn.save({"w": minifpn.Tensor(np.ones(3))}, path)
    before_bytes, before_files = path.read_bytes(), _snapshot(tmp_path)

    with pytest.raises(TypeError):
        minifpn.save({"w": np.zeros(3), "bad": object()}, path)  # not JSON-able

    assert path.read_bytes() == before_bytes
    assert _snapshot(tmp_path) == before_files


def test_save_interrupted_while_writing_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    minifpn.save({"w": minifpn.Tensor(np.ones(3))}, path)
    before_bytes, before_files = path.read_bytes(), _snapshot(tmp_path)

    def crash_midway(file, arrays):
        file.write(b"PK\x03\x04 half a zip file")  # some bytes reach the disk ...
        raise OSError("disk full")  # ... then the write fails

    monkeypatch.setattr(serialization, "_write_npz", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        minifpn.save({"w": minifpn.Tensor(np.zeros(3))}, path)

    assert path.read_bytes() == before_bytes
    assert _snapshot(tmp_path) == before_files


def test_a_failed_write_names_the_file(tmp_path, monkeypatch):
    import errno

    def disk_full(file, arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as the OS says it: no file

    monkeypatch.setattr(serialization, "_write_npz", disk_full)
    path = tmp_path / "ckpt.npz"
    with pytest.raises(OSError, match=rf"could not write {path}: No space left on device"):
        minifpn.save({"w": np.zeros(3)}, path)
    assert _snapshot(tmp_path) == []


def test_atomic_write_without_overwrite_refuses_an_existing_file(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"the user's")
    with pytest.raises(FileExistsError):
        with serialization.atomic_write(path, "wb", overwrite=False) as f:
            f.write(b"ours")
    assert path.read_bytes() == b"the user's" and _snapshot(tmp_path) == ["picture.png"]
    with serialization.atomic_write(tmp_path / "new.png", "wb", overwrite=False) as f:
        f.write(b"ours")
    assert (tmp_path / "new.png").read_bytes() == b"ours"
    assert _snapshot(tmp_path) == ["new.png", "picture.png"]


def test_save_creates_folders_and_rejects_bad_input(tmp_path):
    path = tmp_path / "a" / "b" / "ckpt.npz"
    minifpn.save({"x": minifpn.Tensor(np.ones(2))}, path)
    np.testing.assert_array_equal(minifpn.load(path)["x"], np.ones(2))
    with pytest.raises(TypeError):
        minifpn.save([np.ones(2)], tmp_path / "list.npz")
    with pytest.raises(ValueError):
        minifpn.save({"a/b": 1}, tmp_path / "slash.npz")


def test_load_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        minifpn.load(missing)


@pytest.mark.parametrize(
    "content",
    [
        b"this is not an npz file at all",
        b"",
        "truncated",
    ],
    ids=["garbage", "empty", "truncated"],
)
def test_load_corrupt_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.npz"
    if content == "truncated":
        minifpn.save({"x": minifpn.Tensor(np.arange(1000.0))}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.npz"):
        minifpn.load(path)


def test_keys_that_clash_with_numpy_savez_arguments_are_fine(tmp_path):
    path = tmp_path / "odd.npz"
    minifpn.save({"file": np.ones(2), "allow_pickle": np.zeros(1)}, path)
    loaded = minifpn.load(path)
    np.testing.assert_array_equal(loaded["file"], np.ones(2))
    np.testing.assert_array_equal(loaded["allow_pickle"], np.zeros(1))


def test_saved_files_are_readable_by_others(tmp_path):
    path = tmp_path / "model.npz"
    minifpn.save({"w": np.ones(2)}, path)
    assert os.stat(path).st_mode & 0o044 == 0o044 & ~_current_umask()


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_json_and_figures_share_the_atomic_write(tmp_path):
    # write_json_atomic and save_figure go through serialization.atomic_write: a failure
    # mid-write keeps the old file and leaves no temporary file; new files are not owner-only.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from minifpn.serialization import write_json_atomic
    from minifpn.viz import save_figure

    path = tmp_path / "sub" / "metrics.json"
    write_json_atomic(path, {"AP": 0.5})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"AP": object()})  # not JSON: fails inside the write
    assert path.read_text() == '{"AP": 0.5}'
    png = tmp_path / "curve.png"
    save_figure(Figure(figsize=(1, 1)), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["curve.png", "metrics.json", "sub"]
    for f in (path, png):
        assert os.stat(f).st_mode & 0o044 == 0o044 & ~_current_umask()
