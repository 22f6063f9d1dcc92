"""``minifpn doctor``: what this machine has, and whether minifpn works on it.

It prints, in a few lines, the Python, NumPy and BLAS in use, CuPy and CUDA
(or exactly why device "cuda" is unavailable and what to install), then runs a
short self-check on every available device:

* ``conv2d gradcheck`` — a float64 central-difference check of a 3×3 conv;
* ``roi_align fwd/bwd`` — RoIAlign's gradient checked the same way;
* ``tiny train step`` — one SGD step of the ``tiny`` Mask R-CNN on a
  synthetic image, whose five losses must be finite.

Each check prints pass/FAIL and its time; the exit status is 1 when one
fails (0 otherwise), so a script or a CI job can rely on it.
"""

from __future__ import annotations

import platform
import sys
import time
import traceback

import numpy as np

import minifpn
import minifpn.functional as F
from minifpn import backend, optim
from minifpn.engine.config import build_model
from minifpn.ops import roi_align


def environment() -> list[tuple[str, str]]:
    """``(name, value)`` lines describing the machine's Python, NumPy, BLAS, CuPy and GPU."""
    lines = [
        ("minifpn", minifpn.__version__),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("NumPy", np.__version__),
        ("BLAS", _blas()),
    ]
    cupy = backend.cupy
    if cupy is None:
        lines.append(("CuPy", "not installed"))
    else:
        lines.append(("CuPy", getattr(cupy, "__version__", "?")))
    reason = backend.cuda_unavailable_reason()
    if reason is None:
        runtime = cupy.cuda.runtime
        properties = runtime.getDeviceProperties(0)
        name = properties["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        free, total = cupy.cuda.Device(0).mem_info
        lines += [
            ("CUDA", f"runtime {_cuda_version(runtime.runtimeGetVersion())}, "
                     f"driver {_cuda_version(runtime.driverGetVersion())}"),
            ("GPU", f"{name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)"),
        ]
    else:
        lines.append(("cuda", f"unavailable — {reason}"))
    return lines


def _blas() -> str:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # NumPy < 1.26 has no mode="dicts"
        return "unknown"


def _cuda_version(code: int) -> str:
    """CUDA's integer version (12090) as text (12.9)."""
    return f"{code // 1000}.{code % 1000 // 10}"


# ---------------------------------------------------------------------------
# The self-checks: each takes a device and raises if something is wrong.
# ---------------------------------------------------------------------------
def check_conv2d(device: str) -> None:
    rng = np.random.default_rng(0)
    x = minifpn.Tensor(rng.standard_normal((2, 3, 6, 5)), requires_grad=True, device=device)
    w = minifpn.Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True, device=device)
    b = minifpn.Tensor(rng.standard_normal(4), requires_grad=True, device=device)
    minifpn.gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [x, w, b])


def check_roi_align(device: str) -> None:
    rng = np.random.default_rng(1)
    features = minifpn.Tensor(rng.standard_normal((2, 3, 10, 12)), requires_grad=True,
                              device=device)
    rois = backend.to_device(
        np.array([[0, 1.3, 2.2, 7.9, 8.4], [1, 0.0, 0.0, 11.0, 9.0], [0, 4.5, 3.0, 6.0, 5.5]]),
        device)
    minifpn.gradcheck(lambda f: roi_align(f, rois, 3, 1.0, 2, aligned=True), [features])


def check_train_step(device: str) -> None:
    minifpn.manual_seed(0)
    model = build_model("tiny", num_classes=3, overrides={"min_size": 128, "max_size": 128})
    model.to(device).train()
    image = np.full((3, 128, 128), 0.2, np.float32)
    image[:, 30:90, 40:100] = 0.8
    mask = np.zeros((1, 128, 128), np.uint8)
    mask[0, 30:90, 40:100] = 1
    target = {"boxes": np.array([[40.0, 30, 100, 90]], np.float32), "labels": np.array([1]),
              "masks": mask}
    moved = backend.to_device_many([image, target["boxes"], target["labels"], mask], device)
    images = [minifpn.Tensor(moved[0])]
    targets = [dict(zip(("boxes", "labels", "masks"), moved[1:]))]
    sgd = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = model(images, targets)
    values = backend.to_numpy(backend.get_array_module(moved[0]).stack(
        [loss.data for loss in losses.values()]))
    if len(values) != 5 or not np.isfinite(values).all():
        raise AssertionError(f"losses {dict(zip(losses, values.tolist()))} are not 5 finite "
                             "numbers")
    sgd.zero_grad()
    sum(losses.values()).backward()
    sgd.step()
    if not all(np.isfinite(backend.to_numpy(p.data)).all() for p in model.parameters()):
        raise AssertionError("a parameter is not finite after the SGD step")


CHECKS = (
    ("conv2d gradcheck", check_conv2d),
    ("roi_align fwd/bwd", check_roi_align),
    ("tiny train step", check_train_step),
)


def run_checks(devices, out=None) -> bool:
    """Run every check on every device, printing one line each; True when all pass."""
    out = out or sys.stdout
    ok = True
    for device in devices:
        for name, check in CHECKS:
            began = time.perf_counter()
            try:
                check(device)
                verdict, detail = "pass", ""
            except Exception as error:  # report and go on: the user wants the whole picture
                ok = False
                verdict = "FAIL"
                detail = f"  {type(error).__name__}: {error}".splitlines()[0][:200]
                traceback.print_exc(file=sys.stderr)
            seconds = time.perf_counter() - began
            print(f"  {device:5s} {name:20s} {verdict:4s} {seconds:6.2f} s{detail}", file=out)
    return ok


def doctor(devices=None, out=None) -> int:
    """Print the environment and run the checks; returns the exit status (0 all passed, 1 not).

    ``devices``: the devices to check (default: "cpu", and "cuda" when available).
    ``out``: where to print (default: standard output).
    """
    out = out or sys.stdout
    for name, value in environment():
        print(f"{name:8s} {value}", file=out)
    if devices is None:
        devices = ["cpu"] + (["cuda"] if backend.cuda_available() else [])
    devices = [backend.normalize_device(d) for d in devices]
    if "cuda" in devices and not backend.cuda_available():
        print("cannot check device cuda: it is unavailable (see above)", file=out)
        return 1
    print(f"self-check on {', '.join(devices)}:", file=out)
    ok = run_checks(devices, out)
    print("all checks passed" if ok else "some checks FAILED (details above on stderr)",
          file=out)
    return 0 if ok else 1
