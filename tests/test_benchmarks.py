"""The arithmetic of benchmarks/bench_ops.py, checked on hand-computed cases,
and a ``--quick`` smoke run of benchmarks/bench_models.py.

No timings here: benchmarks are scripts that print tables, never timed tests.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_ops.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ops", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ops"] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_ops", None)


@pytest.fixture
def small(bench):
    # 3×3 conv, 2 → 3 channels, 4×4 input, padding 1: output 3×4×4.
    return bench.Layer("small", n=1, c_in=2, c_out=3, k=3, stride=1, padding=1, h=4, w=4)


def test_output_size(bench, small):
    assert small.out_size == (4, 4)
    assert bench.conv_out_size(256, 256, k=7, stride=2, padding=3) == (128, 128)
    assert bench.conv_out_size(64, 64, k=3, stride=2, padding=1) == (32, 32)
    assert bench.conv_out_size(5, 7, k=3) == (3, 5)


def test_flops_by_hand(bench, small):
    # Each of the 3·4·4 = 48 outputs is a dot product of length 2·3·3 = 18:
    # 18 multiplies + 18 adds = 36 FLOPs, so 48 · 36 = 1728.
    assert bench.forward_flops(small) == 1728
    # Backward: grad weight and grad input are one forward-sized GEMM each.
    assert bench.forward_backward_flops(small) == 3 * 1728
    stem = bench.Layer("stem", 1, 2, 3, 3, 1, 1, 4, 4, input_grad=False)
    assert bench.forward_backward_flops(stem) == 2 * 1728
    # Batch and stride scale as expected: N=2, stride 2 → 2·3·2·9·(2·2)·2.
    strided = bench.Layer("s2", 2, 2, 3, 3, 2, 1, 4, 4)
    assert bench.forward_flops(strided) == 2 * 3 * 2 * 9 * 4 * 2


def test_memory_ratio_by_hand(bench, small):
    # Output 3·4·4 = 48 elements × 9 taps × 4 bytes = 1728 bytes.
    assert bench.im2col_reference_bytes(small) == 1728
    assert bench.im2col_reference_bytes(small, itemsize=8) == 3456
    assert bench.memory_ratio(3456, small) == pytest.approx(2.0)
    assert bench.memory_ratio(0, small) == 0.0
    assert bench.memory_ratio(None, small) is None


def test_gflops_and_verdicts(bench):
    assert bench.gflops(3 * 10**9, 1.5) == pytest.approx(2.0)
    row = {
        "layer": "fpn3x3_64x64",
        "n": 1,
        "forward_backward_gflops": 60.0,
        "forward_memory_ratio": 1.1,
        "backward_memory_ratio": 2.1,
    }
    v = bench.verdicts([row], gemm_ref=100.0)
    assert "PASS" in v["speed"] and "60 %" in v["speed"]
    assert "MISS" in v["memory"] and "2.10×" in v["memory"]
    v = bench.verdicts([dict(row, forward_backward_gflops=40.0, backward_memory_ratio=1.5)], 100.0)
    assert "MISS" in v["speed"] and "PASS" in v["memory"]
    assert "not measured" in bench.verdicts([], 100.0)["speed"]


def test_cli_defaults(bench):
    quick = bench.parse_args(["--quick"])
    assert quick.repeat == 1 and quick.batch == [1]
    assert set(quick.layers) <= set(bench.LAYER_NAMES)
    full = bench.parse_args([])
    assert full.repeat == 5 and full.batch == [1, 2] and full.layers == bench.LAYER_NAMES


# ---------------------------------------------------------------------------
# benchmarks/bench_models.py: the cases it builds, its synthetic data, and a
# --quick run end to end (tiny shapes, slim models, one repeat; no timings checked).
# ---------------------------------------------------------------------------
MODELS = BENCH.parent / "bench_models.py"


@pytest.fixture(scope="module")
def models():
    torch_before = "torch" in sys.modules
    spec = importlib.util.spec_from_file_location("bench_models", MODELS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_models"] = module
    try:
        spec.loader.exec_module(module)
        # torch is only ever imported inside a child process that runs a twin.
        assert torch_before or "torch" not in sys.modules
        yield module
    finally:
        sys.modules.pop("bench_models", None)


def test_models_cases(models):
    quick = models.parse_args(["--quick"])
    assert quick.repeat == 1 and quick.width == 0.125
    full = models.parse_args([])
    assert full.repeat == 3 and full.width == 1.0 and full.only == list(models.BENCHMARKS)
    cases = {(c.bench, c.label): c for c in models.build_cases(full)}
    assert set(cases) == {
        ("backbone_fwd", "1×3×512×512"), ("backbone_fwd", "1×3×800×800"),
        ("backbone_fwd_bwd", "1×3×512×512"), ("backbone_fwd_bwd", "1×3×800×800"),
        ("maskrcnn_train", "2×3×800×1333"), ("maskrcnn_infer", "1×3×800×1333"),
        ("tiny_train", "2×3×256×256"),
    }
    assert cases["backbone_fwd", "1×3×512×512"].settings == dict(
        backbone="resnet50", width=1.0, out_channels=256)
    # MaskRCNN(resnet_fpn_backbone("resnet50"), 81) is the "r50" preset, nothing overridden.
    assert cases["maskrcnn_train", "2×3×800×1333"].settings == {"preset": "r50"}
    assert cases["maskrcnn_train", "2×3×800×1333"].num_classes == 81
    assert cases["tiny_train", "2×3×256×256"].settings == {"preset": "tiny"}
    assert cases["tiny_train", "2×3×256×256"].num_classes == 4
    only = models.build_cases(models.parse_args(["--only", "tiny_train", "--quick"]))
    assert [c.bench for c in only] == ["tiny_train"]


def test_models_synthetic_batch(models):
    batch = models.synthetic_batch(np.random.default_rng(0), 2, 40, 56, num_classes=4)
    assert len(batch) == 2
    for image, target in batch:
        assert image.shape == (3, 40, 56) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        boxes, masks = target["boxes"], target["masks"]
        assert boxes.shape == (3, 4) and masks.shape == (3, 40, 56) and masks.dtype == np.uint8
        assert ((target["labels"] >= 1) & (target["labels"] < 4)).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= (56, 40)).all()
        for box, mask in zip(boxes, masks):  # every mask is non-empty and inside its box
            ys, xs = np.nonzero(mask)
            assert len(xs) and xs.min() >= box[0] - 1 and xs.max() + 1 <= box[2] + 1
            assert ys.min() >= box[1] - 1 and ys.max() + 1 <= box[3] + 1
    again = models.synthetic_batch(np.random.default_rng(0), 2, 40, 56, num_classes=4)
    np.testing.assert_array_equal(again[1][0], batch[1][0])  # same seed, same data


def test_models_quick_run(models, capsys):
    torch_missing = importlib.util.find_spec("torch") is None
    # One thread per child (a shared 2-core machine); torch twins only where torch is not
    # installed anyway, so that the test stays a few seconds everywhere.
    rows = models.main(["--quick", "--threads", "1"] + ([] if torch_missing else ["--no-torch"]))
    out = capsys.readouterr().out
    assert "| benchmark | input | ours (ms) | torch (ms) | ratio (ours/torch) |" in out
    table = [line for line in out.splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0][2:] for line in table] == list(models.BENCHMARKS)
    for line, row in zip(table, rows):
        cells = line.split(" | ")
        float(cells[2].split()[0])  # ours: a time in ms, not an error
        assert row["minifpn"]["seconds"] > 0 and row["minifpn"]["peak_bytes"] >= 0
        if torch_missing:
            assert cells[3] == "skipped (torch not installed)" and cells[4] == "n/a"
    assert "it/s" in table[-1]  # tiny_train also reports iterations per second


def test_models_rounds_alternate_and_merge(models, monkeypatch, capsys):
    order = []

    def fake_child(args, framework, k):
        order.append(framework)
        return {"seconds": 1.0, "times_s": [len(order) * 0.1], "peak_bytes": len(order)}

    monkeypatch.setattr(models, "run_child", fake_child)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: object())  # "torch"
    rows = models.main(["--quick", "--only", "tiny_train", "--rounds", "3", "--stat", "min"])
    assert order == ["minifpn", "torch", "torch", "minifpn", "minifpn", "torch"]
    ours, torch = rows[0]["minifpn"], rows[0]["torch"]
    assert ours["times_s"] == pytest.approx([0.1, 0.4, 0.5]) and ours["seconds"] == 0.1
    assert torch["seconds"] == pytest.approx(0.2) and torch["peak_bytes"] == 6  # the largest
    assert "min of 1 calls in each of 3 alternating rounds" in capsys.readouterr().out
    median = models.merge_rounds([{"seconds": 0, "times_s": [3.0, 1.0]},
                                  {"seconds": 0, "times_s": [2.0]}], "median")
    assert median["seconds"] == 2.0
    failed = {"error": "TypeError: boom"}
    assert models.merge_rounds([{"seconds": 1, "times_s": [1]}, failed], "min") is failed


def test_bench_distributed_table_by_hand():
    spec = importlib.util.spec_from_file_location(
        "bench_distributed", BENCH.with_name("bench_distributed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    single = [{"time": t} for t in (0.5, 0.4, 0.6)]  # median 0.5
    parallel = [{"time": t, "allreduce_time": a} for t, a in ((0.3, 0.03), (0.2, 0.02),
                                                              (0.25, 0.025))]
    table = module.summarize(single, parallel, bare=0.005, processes=2)
    assert "| 0.500 | 1.00× |" in table and "| 0.250 | 0.50× |" in table
    # all-reduce: median 25 ms of a 250 ms step = 10 %; the bare one 5 ms = 2 %
    assert "25.0 ms median (10.0 % of the step)" in table and "5.0 ms (2.0 %)" in table


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, BENCH.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(folder, lr, evals, final, times):
    """A run folder as minifpn train leaves it: config, per-step log with evaluations, final."""
    import json

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"lr": lr, "iters": len(times), "out": str(
        folder), "weights": None}))
    lines = []
    for i, t in enumerate(times):
        lines.append({"iter": i, "loss": 1.0, "time": t})
        if i + 1 in evals:
            lines.append({"iter": i, "eval": evals[i + 1]})
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (folder / "metrics.json").write_text(json.dumps(final))


def metrics(ap50):
    return {"bbox": {"AP": ap50 / 4, "AP50": ap50, "AP_small": 0.0, "AP_medium": 0.1,
                     "AP_large": 0.2}, "segm": {"AP50": ap50 / 2}, "proposals": {"AR@1000": 0.5}}


def test_learning_curves_read_each_evaluation_with_its_training_minutes(tmp_path, capsys):
    curves = _load_script("learning_curves")
    _fake_run(tmp_path / "base", 0.01, {2: metrics(0.1)}, metrics(0.3), [30.0, 30.0, 60.0, 60.0])
    _fake_run(tmp_path / "fast", 0.02, {}, metrics(0.4), [6.0, 6.0, 6.0, 6.0])
    out = tmp_path / "curves.json"
    assert curves.main([str(tmp_path / "base"), str(tmp_path / "fast"), "--json", str(out),
                        "--name", f"lr-0.02={tmp_path / 'fast'}"]) == 0
    table = capsys.readouterr().out.splitlines()
    # base: 4 steps of 30 + 30 + 60 + 60 s = 3 minutes; evaluated after 2 steps (1 minute)
    assert table[2] == "| base | (the base run) | 4 | 3.0 | 0.300 | 0.075 | 0.150 | 0.500 |"
    assert table[3] == "| lr-0.02 | lr=0.02 | 4 | 0.4 | 0.400 | 0.100 | 0.200 | 0.500 |"
    import json

    saved = json.loads(out.read_text())
    assert [(p["iteration"], p["minutes"], p["bbox_AP50"]) for p in saved["base"]["points"]] == [
        (2, 1.0, 0.1), (4, 3.0, 0.3)]
    assert saved["lr-0.02"]["differs"] == "lr=0.02"
    (tmp_path / "empty").mkdir()
    assert curves.main([str(tmp_path / "empty")]) == 2
    assert "empty" in capsys.readouterr().err


def test_learning_curves_add_runs_to_a_saved_file(tmp_path, capsys):
    """--from keeps a saved file's runs (folders gone), adds new ones, moves a re-given one last."""
    import json
    import shutil

    curves = _load_script("learning_curves")
    _fake_run(tmp_path / "base", 0.01, {}, metrics(0.3), [60.0, 60.0])
    _fake_run(tmp_path / "recipe", 0.005, {}, metrics(0.5), [60.0, 60.0])
    saved = tmp_path / "curves.json"
    first = [str(tmp_path / "base"), str(tmp_path / "recipe"), "--json", str(saved)]
    assert curves.main(first) == 0
    shutil.rmtree(tmp_path / "base")  # the base run's folder is gone; its numbers are in the file
    _fake_run(tmp_path / "new", 0.02, {}, metrics(0.4), [30.0, 30.0])
    capsys.readouterr()
    assert curves.main(["--from", str(saved), str(tmp_path / "new"), str(tmp_path / "recipe"),
                        "--json", str(saved)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == ["| base", "| new", "| recipe"]
    assert table[3] == "| new | lr=0.02 | 2 | 1.0 | 0.400 | 0.100 | 0.200 | 0.500 |"
    again = json.loads(saved.read_text())
    assert list(again) == ["base", "new", "recipe"]
    assert again["recipe"]["differs"] == "lr=0.005"
    assert again["base"]["points"] == [{"iteration": 2, "minutes": 2.0, "bbox_AP": 0.075,
                                        "bbox_AP50": 0.3, "bbox_AP_small": 0.0,
                                        "bbox_AP_medium": 0.1, "bbox_AP_large": 0.2,
                                        "segm_AP50": 0.15, "AR@1000": 0.5}]
    with pytest.raises(SystemExit):
        curves.main([])  # nothing to read
    assert curves.main(["--from", str(tmp_path / "missing.json")]) == 2


def test_person_ablation_rows_change_one_thing_from_the_recorded_base_run():
    """The script's base is the base row of person_recipe.json; each row differs where it says."""
    import json

    from minifpn.engine.config import TrainConfig

    ablation = _load_script("person_ablation")
    recorded = json.loads((BENCH.parent / "person_recipe.json").read_text())["base"]["config"]
    made = json.loads(json.dumps(vars(ablation.config_for("base", recorded["out"]))))
    new_since = {"copy_paste": 0.0}  # settings added after the base run, off there
    assert {**recorded, **new_since} == made
    base = vars(ablation.config_for("base", "x"))
    for row, (change, _) in ablation.ROWS.items():
        config = ablation.config_for(row, "x")
        assert isinstance(config, TrainConfig)
        assert {k for k, v in vars(config).items() if base[k] != v} == set(change), row
    # a batch of 4 sees as many images in 1,000 iterations as the base in 2,000
    batch = ablation.config_for("batch-4", "x")
    assert batch.batch_size * batch.iters == base["batch_size"] * base["iters"]
