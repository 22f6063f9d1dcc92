"""``minifpn doctor``: the environment report, the self-checks, and the exit status."""

import io

import pytest

from minifpn import backend, cli, doctor


def run(devices=None):
    out = io.StringIO()
    status = doctor.doctor(devices, out=out)
    return status, out.getvalue()


def test_doctor_checks_a_device_and_passes(device):
    status, text = run([device])
    assert status == 0, text
    for line in ("Python", "NumPy", "BLAS", "CuPy", "conv2d gradcheck", "roi_align fwd/bwd",
                 "tiny train step", "all checks passed"):
        assert line in text
    assert text.count(" pass ") == 3
    if device == "cuda":  # the GPU (or the stand-in) is described
        assert "GPU" in text and "CUDA" in text


def test_a_failing_check_is_reported_and_exits_1(monkeypatch):
    def broken(device):
        raise AssertionError("gradient off by 2x")

    monkeypatch.setattr(doctor, "CHECKS", (("conv2d gradcheck", broken),))
    status, text = run(["cpu"])
    assert status == 1
    assert "FAIL" in text and "gradient off by 2x" in text and "some checks FAILED" in text


def test_missing_cupy_is_explained(monkeypatch):
    previous = backend.set_cuda_module(None, None)
    try:
        status, text = run(["cuda"])
    finally:
        backend.set_cuda_module(*previous)
    assert status == 1
    assert "CuPy" in text and "pip install -e .[gpu]" in text
    assert "cannot check device cuda" in text


def test_cli_doctor(capsys):
    assert cli.main(["doctor", "--device", "cpu"]) == 0
    assert "all checks passed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--device", "tpu"])
