"""Model-level speed of minifpn against a PyTorch twin of each model.

Prints a Markdown table: for each benchmark, the median time of ours and of
the PyTorch twin, their ratio and each side's peak memory, after a header
describing the machine. What is measured (float32, ``--repeat`` timed calls
after one untimed warm-up, median reported):

* ``backbone_fwd`` — ResNet-50-FPN (``resnet_fpn_backbone("resnet50")``,
  GroupNorm) forward of a 1×3×512×512 and a 1×3×800×800 input, autograd
  recording as in training (the forward half of ``backbone_fwd_bwd``);
* ``backbone_fwd_bwd`` — the same, plus ``loss = Σ_levels mean(P_l)`` and
  ``loss.backward()`` (gradients reset to None before each call);
* ``maskrcnn_train`` — one Mask R-CNN R50-FPN training iteration
  (``MaskRCNN(resnet_fpn_backbone("resnet50"), 81)``): forward with targets, Σ losses, backward, on
  two synthetic 800×1333 images with 3 boxes + masks each (no optimiser step);
* ``maskrcnn_infer`` — the same model in eval mode under ``no_grad``, one
  800×1333 image per call (time per image, masks pasted); ``box_score_thresh``
  is 0 so that an untrained model still sends 100 detections to the mask head;
* ``tiny_train`` — the ``tiny`` training preset
  (``build_model("tiny", num_classes=4)``), two 256×256 images: forward +
  backward + SGD step; reported as ms per iteration and iterations/s.

The twins are plain PyTorch: torchvision's ``resnet_fpn_backbone`` and
``MaskRCNN`` when torchvision is importable (GroupNorm backbone by default,
see ``--torch-norm``), otherwise a hand-written ResNet-FPN below (backbone
benchmarks only). torch is imported only inside the child process that runs
a twin; without torch the twins are reported as skipped.

Every (benchmark, input, framework) runs in its own child process (this
script re-invoked with ``--framework minifpn|torch --case K``): two BLAS / OpenMP
thread pools in one process slow each other down on a small machine, and a
fresh process makes the peak-memory figure that case's own (CPU: how much the
child's peak RSS, ``ru_maxrss``, grew above its imports; CUDA: CuPy's memory
pool bytes held / ``torch.cuda.max_memory_allocated``). Children print one JSON line.

Usage::

    python benchmarks/bench_models.py --repeat 3            # full run (minutes on a CPU)
    python benchmarks/bench_models.py --quick               # smoke test, seconds
    python benchmarks/bench_models.py --only backbone_fwd backbone_fwd_bwd --threads 2
    python benchmarks/bench_models.py --device cuda --json models_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("backbone_fwd", "backbone_fwd_bwd", "maskrcnn_train", "maskrcnn_infer", "tiny_train")
#: Marks the child's result line on its stdout.
RESULT_TAG = "BENCH_MODELS_RESULT "
#: ResNet depth → (bottleneck blocks?, blocks per stage), as minifpn.models.resnet.
RESNETS = {"resnet18": (False, (2, 2, 2, 2)), "resnet34": (False, (3, 4, 6, 3)),
           "resnet50": (True, (3, 4, 6, 3)), "resnet101": (True, (3, 4, 23, 3))}


@dataclass(frozen=True)
class Case:
    """One row of the table: a benchmark on one input, model settings shared by both sides."""

    bench: str
    shape: tuple  # (N, 3, H, W) of the images of one call
    #: backbone benchmarks: backbone/width/out_channels; detectors: "preset" plus
    #: overrides of that preset (minifpn.engine.config.PRESETS).
    settings: dict = field(default_factory=dict)
    num_classes: int = 81

    @property
    def label(self) -> str:
        return "×".join(map(str, self.shape))


def build_cases(args) -> list[Case]:
    """The cases selected by --only, at full size or (--quick) tiny shapes and widths."""
    width = args.width
    r50 = dict(backbone="resnet50", width=width, out_channels=max(8, round(256 * width)))
    if args.quick:  # a slim R50 on 64-pixel images, light heads and few RoIs
        backbone_sizes = [(64, 64)]
        det_hw, tiny_hw = (64, 96), (64, 64)
        det = dict(r50, min_size=64, max_size=96, representation_size=64,
                   mask_layers=(32, 32, 32, 32), mask_dim_reduced=32,
                   rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
                   rpn_post_nms_top_n_train=50, rpn_post_nms_top_n_test=30,
                   box_batch_size_per_image=32, box_detections_per_img=10)
        tiny = dict(min_size=64, max_size=64)
    else:
        backbone_sizes = [(512, 512), (800, 800)]
        det_hw, tiny_hw = (800, 1333), (256, 256)
        # The "r50" preset is MaskRCNN(backbone, 81)'s defaults exactly (R50-FPN,
        # GroupNorm, 256 channels, 800/1333); only the width may be overridden.
        det = dict(r50) if width != 1.0 else {}
        tiny = {}
    cases = []
    for bench in args.only:
        if bench.startswith("backbone"):
            cases += [Case(bench, (1, 3, h, w), r50) for h, w in backbone_sizes]
        elif bench == "maskrcnn_train":
            cases.append(Case(bench, (2, 3, *det_hw), {"preset": "r50", **det}))
        elif bench == "maskrcnn_infer":
            cases.append(Case(bench, (1, 3, *det_hw),
                              {"preset": "r50", **det, "box_score_thresh": 0.0}))
        elif bench == "tiny_train":
            cases.append(Case(bench, (2, 3, *tiny_hw), {"preset": "tiny", **tiny}, num_classes=4))
    return cases


def synthetic_batch(rng, n: int, h: int, w: int, num_classes: int, objects: int = 3) -> list:
    """``n`` (image, target) pairs: ``objects`` filled ellipses per image on a noisy background.

    Images are ``(3, h, w)`` float32 in [0, 1]; targets hold ``boxes`` ``(G, 4)``
    (each ellipse's bounding box), ``labels`` ``(G,)`` int64 and ``masks``
    ``(G, h, w)`` uint8. The same seed gives both frameworks the same data.
    """
    yy, xx = (np.mgrid[:h, :w] + 0.5).astype(np.float32)  # pixel centres
    batch = []
    for _ in range(n):
        size = rng.uniform(0.125, 0.5, (objects, 2)) * (w, h)  # box width, height
        x1y1 = rng.uniform(0.0, 1.0, (objects, 2)) * ((w, h) - size)
        boxes = np.concatenate([x1y1, x1y1 + size], axis=1).astype(np.float32)
        cx, cy = ((boxes[:, :2] + boxes[:, 2:]) / 2).T[..., None, None]
        rx, ry = (size / 2).T[..., None, None]
        masks = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0  # (G, h, w)
        # Paint all objects at once: each pixel takes the colour of the last object on it.
        top = (masks * np.arange(1, objects + 1)[:, None, None]).max(axis=0)
        colours = rng.uniform(0.0, 1.0, (objects + 1, 3)).astype(np.float32)  # [0]: background
        image = colours[top].transpose(2, 0, 1) + 0.05 * rng.standard_normal((3, h, w))
        target = {"boxes": boxes, "labels": rng.integers(1, num_classes, objects),
                  "masks": masks.astype(np.uint8)}
        batch.append((np.clip(image, 0.0, 1.0).astype(np.float32), target))
    return batch


# ---------------------------------------------------------------------------
# The two frameworks behind one interface (each lives in its own child process)
# ---------------------------------------------------------------------------
def peak_rss_bytes() -> int:
    """The process's peak resident set size (Linux reports KiB, macOS bytes)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


class Ours:
    name = "minifpn"

    def __init__(self, args):
        import minifpn
        import minifpn.engine.config  # noqa: F401  (all imports before the RSS baseline)
        from minifpn import backend

        self.mf, self.backend, self.device = minifpn, backend, args.device
        if args.device == "cuda" and not backend.cuda_available():
            raise RuntimeError("--device cuda needs CuPy and a visible CUDA GPU")

    def sync(self):
        if self.device == "cuda":
            self.backend.cupy.cuda.Device().synchronize()

    def tensor(self, array):
        return self.mf.Tensor(array, device=self.device)

    def target(self, t: dict) -> dict:
        return {k: self.backend.to_device(v, self.device) for k, v in t.items()}

    def backbone(self, s: dict):
        from minifpn.models import resnet_fpn_backbone

        model = resnet_fpn_backbone(s["backbone"], width=s["width"], out_channels=s["out_channels"])
        return model.to(self.device)

    def detector(self, s: dict, num_classes: int):
        from minifpn.engine.config import build_model

        s = dict(s)
        return build_model(s.pop("preset"), num_classes, overrides=s).to(self.device)

    def sgd(self, params, **kw):
        from minifpn import optim

        return optim.SGD(params, **kw)

    def no_grad(self):
        return self.mf.no_grad()

    def peak_memory(self) -> dict:
        if self.device == "cuda":  # bytes the pool holds: its high-water mark, as it never frees
            pool = self.backend.cupy.get_default_memory_pool()
            return {"peak_bytes": pool.total_bytes(), "pool_used_bytes": pool.used_bytes()}
        return {"peak_bytes": peak_rss_bytes()}

    def versions(self) -> dict:
        return {"minifpn": self.mf.__version__, "numpy": np.__version__}


class Torch:
    name = "torch"

    def __init__(self, args):
        import torch

        if importlib.util.find_spec("torchvision") is not None:
            import torchvision.models.detection  # noqa: F401  (before the RSS baseline)
        self.torch, self.device, self.norm = torch, args.device, args.torch_norm
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def tensor(self, array):
        return self.torch.from_numpy(array).to(self.device)

    def target(self, t: dict) -> dict:
        return {k: self.torch.from_numpy(v).to(self.device) for k, v in t.items()}

    def _norm_layer(self):
        nn = self.torch.nn
        return (lambda c: nn.GroupNorm(math.gcd(32, c), c)) if self.norm == "gn" else nn.BatchNorm2d

    def backbone(self, s: dict, to_device: bool = True):
        """torchvision's resnet_fpn_backbone (all layers trainable) at full width,
        else the hand-written twin of ours (torchvision's ResNet has no width option)."""
        full = s["width"] == 1.0 and s["out_channels"] == 256
        if full and importlib.util.find_spec("torchvision") is not None:
            from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

            model = resnet_fpn_backbone(backbone_name=s["backbone"], weights=None,
                                        norm_layer=self._norm_layer(), trainable_layers=5)
        else:
            model = torch_resnet_fpn(s["backbone"], s["width"], s["out_channels"],
                                     self._norm_layer())
        return model.to(self.device) if to_device else model

    def detector(self, s: dict, num_classes: int):
        """torchvision's MaskRCNN with our preset's settings.

        ``--torch-norm gn`` (default): ``maskrcnn_resnet50_fpn(weights=None,
        weights_backbone=None, num_classes=81)``'s model with GroupNorm in its
        ResNet (as ours) in place of BatchNorm2d. ``--torch-norm bn``: at full
        size, ``maskrcnn_resnet50_fpn`` itself (BatchNorm2d, batch statistics).
        """
        if importlib.util.find_spec("torchvision") is None:
            return None
        from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import (
            FastRCNNConvFCHead,
            FastRCNNPredictor,
            TwoMLPHead,
        )
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.ops import MultiScaleRoIAlign

        from minifpn.engine.config import PRESETS

        s = dict(s)
        s = {**PRESETS[s.pop("preset")], **s}
        backbone_keys = {k: s.pop(k) for k in ("backbone", "width", "out_channels")}
        full_r50 = backbone_keys == dict(backbone="resnet50", width=1.0, out_channels=256)
        if self.norm == "bn" and full_r50 and set(s) <= {"min_size", "max_size",
                                                         "box_score_thresh"}:
            return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                         num_classes=num_classes, **s).to(self.device)
        backbone = self.backbone(backbone_keys, to_device=False)
        d = backbone.out_channels
        rep = s.pop("representation_size", 1024)
        layers = tuple(s.pop("mask_layers", (256, 256, 256, 256)))
        dim_reduced = s.pop("mask_dim_reduced", 256)
        sizes = s.pop("rpn_anchor_sizes", (32, 64, 128, 256, 512))
        if s.pop("box_head", "2mlp") == "4conv1fc":  # four 3×3 convs with GroupNorm, one fc
            box_head = FastRCNNConvFCHead((d, 7, 7), [d] * 4, [rep], norm_layer=self._norm_layer())
        else:
            box_head = TwoMLPHead(d * 7 * 7, rep)
        parts = dict(
            rpn_anchor_generator=AnchorGenerator(tuple((a,) for a in sizes),
                                                 ((0.5, 1.0, 2.0),) * len(sizes)),
            box_head=box_head, box_predictor=FastRCNNPredictor(rep, num_classes),
            mask_head=MaskRCNNHeads(d, layers, 1),
            mask_predictor=MaskRCNNPredictor(layers[-1], dim_reduced, num_classes),
        )
        if "roi_canonical_size" in s:  # the RoI-to-level rule's 224
            scale, levels = s.pop("roi_canonical_size"), ["0", "1", "2", "3"]
            parts["box_roi_pool"] = MultiScaleRoIAlign(levels, 7, 2, canonical_scale=scale)
            parts["mask_roi_pool"] = MultiScaleRoIAlign(levels, 14, 2, canonical_scale=scale)
        return MaskRCNN(backbone, num_classes=None, **parts, **s).to(self.device)

    def sgd(self, params, **kw):
        return self.torch.optim.SGD(params, **kw)

    def no_grad(self):
        return self.torch.no_grad()

    def peak_memory(self) -> dict:
        if self.device == "cuda":
            cuda = self.torch.cuda
            return {"peak_bytes": cuda.max_memory_allocated(),
                    "reserved_bytes": cuda.max_memory_reserved()}
        return {"peak_bytes": peak_rss_bytes()}

    def versions(self) -> dict:
        tv = "not installed"
        if importlib.util.find_spec("torchvision") is not None:
            import torchvision

            tv = torchvision.__version__
        return {"torch": self.torch.__version__, "torchvision": tv,
                "torch_threads": self.torch.get_num_threads()}


def torch_resnet_fpn(name: str, width: float, out_channels: int, norm_layer):
    """minifpn's ResNet-FPN written in plain torch (same layers and widths, other names).

    Returns torchvision's pyramid layout, ``OrderedDict`` "0".."3" + "pool", so
    that torchvision's detection heads accept it.
    """
    import torch.nn.functional as F
    from torch import nn

    bottleneck, depths = RESNETS[name]
    expansion = 4 if bottleneck else 1

    def conv_norm(c_in, c_out, k, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False),
                             norm_layer(c_out))

    class Block(nn.Module):
        def __init__(self, c_in, c, stride):
            super().__init__()
            spec = ([(c_in, c, 1, 1), (c, c, 3, stride), (c, c * 4, 1, 1)] if bottleneck
                    else [(c_in, c, 3, stride), (c, c, 3, 1)])
            self.convs = nn.ModuleList(conv_norm(*s) for s in spec)
            c_out = spec[-1][1]
            self.shortcut = (conv_norm(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out
                             else nn.Identity())

        def forward(self, x):
            out = x
            for i, conv in enumerate(self.convs):
                out = conv(out)
                out = F.relu(out) if i < len(self.convs) - 1 else out
            return F.relu(out + self.shortcut(x))

    class ResNetFPN(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
            self.stem = nn.Sequential(conv_norm(3, widths[0], 7, 2), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            c_in, stages, channels = widths[0], [], []
            for i, (c, depth) in enumerate(zip(widths, depths)):
                blocks = [Block(c_in if j == 0 else c * expansion, c, 2 if i and not j else 1)
                          for j in range(depth)]
                c_in = c * expansion
                stages.append(nn.Sequential(*blocks))
                channels.append(c_in)
            self.stages = nn.ModuleList(stages)
            self.inner = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in channels)
            self.layer = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                       for _ in channels)
            self.out_channels = out_channels

        def forward(self, x):
            x, feats = self.stem(x), []
            for stage in self.stages:
                x = stage(x)
                feats.append(x)
            inner = self.inner[-1](feats[-1])
            outs = [self.layer[-1](inner)]
            for i in range(len(feats) - 2, -1, -1):  # top-down: C4, C3, C2
                inner = self.inner[i](feats[i]) + F.interpolate(
                    inner, size=feats[i].shape[-2:], mode="nearest")
                outs.insert(0, self.layer[i](inner))
            pyramid = OrderedDict((str(i), out) for i, out in enumerate(outs))
            pyramid["pool"] = F.max_pool2d(outs[-1], 1, 2)
            return pyramid

    return ResNetFPN()


# ---------------------------------------------------------------------------
# One case, timed (child process)
# ---------------------------------------------------------------------------
def time_calls(fn, repeat: int, sync, clock=time.perf_counter) -> list[float]:
    """One untimed warm-up call, then ``repeat`` timed calls (seconds each)."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return times


def run_case(fw, case: Case, repeat: int, seed: int, clock=time.perf_counter) -> dict:
    """Build the case's model and data with framework ``fw`` and time its step."""
    rng = np.random.default_rng(seed)
    n, _, h, w = case.shape
    rss_before = peak_rss_bytes()  # the imports' high-water mark
    if case.bench.startswith("backbone"):
        model = fw.backbone(case.settings)
        model.train()
        x = fw.tensor(rng.standard_normal(case.shape, dtype=np.float32))

        def step():
            pyramid = model(x)
            if case.bench == "backbone_fwd_bwd":
                model.zero_grad()
                sum(p.mean() for p in pyramid.values()).backward()
    else:
        model = fw.detector(case.settings, case.num_classes)
        if model is None:
            return {"skipped": "torchvision not installed"}
        data = synthetic_batch(rng, n, h, w, case.num_classes)
        images = [fw.tensor(image) for image, _ in data]
        targets = [fw.target(target) for _, target in data]
        optimizer = None
        if case.bench == "tiny_train":
            optimizer = fw.sgd(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        model.train(case.bench != "maskrcnn_infer")

        def step():
            if case.bench == "maskrcnn_infer":
                with fw.no_grad():
                    return model(images)
            losses = model(images, targets)
            model.zero_grad()
            sum(losses.values()).backward()
            if optimizer is not None:
                optimizer.step()

    times = time_calls(step, repeat, fw.sync, clock)
    memory = fw.peak_memory()
    if fw.device == "cpu":  # what the case added to the imports' peak RSS
        memory = {"peak_bytes": memory["peak_bytes"] - rss_before,
                  "rss_peak_bytes": memory["peak_bytes"], "rss_after_imports_bytes": rss_before}
    return {"seconds": statistics.median(times), "times_s": times, **memory,  # parent: --stat
            "versions": fw.versions()}


def child_main(args) -> int:
    """Run case ``--case`` with ``--framework``; print its result as one JSON line."""
    case = build_cases(args)[args.case]
    print(f"[bench_models] {args.framework} {case.bench} {case.label} ...", file=sys.stderr,
          flush=True)
    try:
        fw = (Ours if args.framework == "minifpn" else Torch)(args)
        clock = time.process_time if args.cpu_time else time.perf_counter
        plain = args.plain and args.framework == "minifpn"
        with fw.backend.plain_reference() if plain else contextlib.nullcontext():
            result = run_case(fw, case, args.repeat, args.seed, clock)
    except Exception as exc:  # reported in the table; the traceback goes to stderr
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 1 if "error" in result else 0


# ---------------------------------------------------------------------------
# The parent: one child process per (case, framework), then the report
# ---------------------------------------------------------------------------
def child_argv(args, framework: str, k: int) -> list[str]:
    """This script's own command line for one child (same options, so same cases)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--framework", framework,
            "--case", str(k), "--device", args.device, "--repeat", str(args.repeat),
            "--width", repr(args.width), "--seed", str(args.seed),
            "--torch-norm", args.torch_norm, "--stat", args.stat, "--only", *args.only]
    argv += ["--cpu-time"] if args.cpu_time else []
    argv += ["--plain"] if args.plain else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    return argv + (["--quick"] if args.quick else [])


def run_child(args, framework: str, k: int) -> dict:
    env = dict(os.environ)
    if args.threads:  # both sides get the same thread count
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
    proc = subprocess.run(child_argv(args, framework, k), stdout=subprocess.PIPE, text=True,
                          env=env)  # stderr (progress, tracebacks) passes straight through
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return {"error": f"child exited with code {proc.returncode} and no result"}


def merge_rounds(results: list[dict], stat: str) -> dict:
    """One side's children of all rounds as one result: ``stat`` over every timed call.

    Peak memory is the largest of the rounds; the first error, if any, wins.
    """
    for result in results:
        if "seconds" not in result:
            return result
    times = [t for result in results for t in result["times_s"]]
    merged = dict(results[0], times_s=times, rounds=len(results))
    merged["seconds"] = (min if stat == "min" else statistics.median)(times)
    for key in ("peak_bytes", "rss_peak_bytes"):
        if key in merged:
            merged[key] = max(result[key] for result in results)
    return merged


def _cell(result: dict, case: Case) -> str:
    if "seconds" not in result:
        reason = result.get("skipped") and f"skipped ({result['skipped']})"
        return reason or f"error: {result.get('error', '?')[:60]}"
    ms = result["seconds"] * 1e3
    return f"{ms:.1f} ({1e3 / ms:.2f} it/s)" if case.bench == "tiny_train" else f"{ms:.1f}"


def _mem(result: dict) -> str:
    return f"{result['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in result else "n/a"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| benchmark | input | ours (ms) | torch (ms) | ratio (ours/torch) "
             "| peak mem ours (MiB) | peak mem torch (MiB) |", "|" + "---|" * 7]
    for row in rows:
        case, ours, torch = row["case"], row["minifpn"], row["torch"]
        ratio = (f"{ours['seconds'] / torch['seconds']:.2f}×"
                 if "seconds" in ours and "seconds" in torch else "n/a")
        lines.append(f"| {case.bench} | {case.label} | {_cell(ours, case)} | {_cell(torch, case)} "
                     f"| {ratio} | {_mem(ours)} | {_mem(torch)} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed calls per case, after one warm-up (default 3, --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 64-pixel inputs, slim models (--width 0.125), 1 repeat")
    p.add_argument("--width", type=float, default=None,
                   help="ResNet-50 width multiplier of the R50 benchmarks; the FPN gets "
                   "round(256·width) channels (default 1.0, --quick: 0.125)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS),
                   metavar="NAME", help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of both sides: OMP/OPENBLAS/MKL_NUM_THREADS and "
                   "torch.set_num_threads in the children (default: inherited)")
    p.add_argument("--torch-norm", choices=("gn", "bn"), default="gn",
                   help="norm of the torch twins' ResNet: gn (as ours) or bn (torchvision's own)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic of the timed calls (default median; min is steadier on a "
                   "machine that is not idle)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run each case's two children this many times, in alternating order "
                   "(ours, torch, torch, ours, …); --stat is taken over all their calls")
    p.add_argument("--cpu-time", action="store_true",
                   help="time CPU seconds of the child process instead of wall seconds: with "
                   "--threads 1, single-core figures even on a machine shared with other jobs")
    p.add_argument("--plain", action="store_true",
                   help="run minifpn on its plain reference paths (backend.plain_reference())")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="run ours only")
    p.add_argument("--json", metavar="OUT.json", help="also write all figures to this file")
    # Internal: set by the parent when it starts a child.
    p.add_argument("--framework", choices=("minifpn", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1 or args.rounds < 1:
        p.error("--repeat and --rounds must be at least 1")
    if args.width is None:
        args.width = 0.125 if args.quick else 1.0
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.framework:
        return child_main(args)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import bench_ops  # the machine description is shared with bench_ops.py

    info = bench_ops.machine_info(bench_ops.Device(args.device))
    torch_missing = importlib.util.find_spec("torch") is None
    no_torch = {"skipped": "torch not installed" if torch_missing else "--no-torch"}
    sides = ["minifpn"] if torch_missing or args.no_torch else ["minifpn", "torch"]
    rows = []
    for k, case in enumerate(build_cases(args)):  # ours and torch alternate, case by case
        runs = {side: [] for side in sides}
        for r in range(args.rounds):  # A B, then B A, …: drifting load hits both alike
            for side in sides if r % 2 == 0 else sides[::-1]:
                runs[side].append(run_child(args, side, k))
        row = {"case": case, "torch": no_torch}
        row.update({side: merge_rounds(results, args.stat) for side, results in runs.items()})
        rows.append(row)
    for row in rows:  # library versions, as the children saw them
        for side in ("minifpn", "torch"):
            info.update(row[side].get("versions", {}))
    info.setdefault("torch", no_torch["skipped"])

    print("# minifpn model benchmark (float32)\n")
    bench_ops.print_machine(info)
    print("## PyTorch twin\n")
    for key in ("torch", "torchvision", "torch_threads"):
        if key in info:
            print(f"- {key}: {info[key]}")
    print(f"- norm of the twins' ResNet: {args.torch_norm}\n")
    warning = bench_ops.load_warning(info, info.get("load_average"))
    if warning:
        print(warning + "\n")
    clock = "CPU time" if args.cpu_time else "wall time"
    rounds = f" in each of {args.rounds} alternating rounds" if args.rounds > 1 else ""
    path = "; minifpn on its plain reference paths" if args.plain else ""
    print(f"## Models ({args.stat} of {args.repeat} calls{rounds}, each after 1 warm-up; "
          f"{clock}; R50 width {args.width:g}{path})\n")
    print(markdown_table(rows))
    print("\nms per call: backbone_* one 1-image batch; maskrcnn_train / tiny_train one "
          "training iteration on 2 images; maskrcnn_infer one image. Peak memory: "
          + ("CuPy pool bytes held (ours), torch.cuda.max_memory_allocated (torch)."
             if args.device == "cuda" else "growth of the child process's peak RSS (ru_maxrss) "
             "from after its imports: model, data, activations, gradients."))
    if args.json:
        report = {"machine": info, "args": {k: v for k, v in vars(args).items() if v is not None},
                  "results": [{"bench": r["case"].bench, "input": r["case"].label,
                               "settings": r["case"].settings, "minifpn": r["minifpn"],
                               "torch": r["torch"]} for r in rows]}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
