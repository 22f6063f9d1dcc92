"""The lesson pictures draw what they claim to draw (Agg backend, tiny inputs)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Circle, FancyBboxPatch  # noqa: E402

from minifpn import Tensor, viz  # noqa: E402
from minifpn.functional.conv import ConvGeometry, col2im, im2col  # noqa: E402


def _texts(ax):
    """The labels drawn in ``ax`` (arrows are empty annotations: left out)."""
    return [t.get_text() for t in ax.texts if t.get_text()]


def _render(fig):
    """Draw to a buffer: catches errors that only show up at draw time."""
    fig.canvas.draw()
    width, height = fig.canvas.get_width_height()
    assert width > 0 and height > 0


def test_draw_graph_has_one_box_per_tensor_and_one_circle_per_op():
    a = Tensor(2.0, requires_grad=True)
    b = Tensor(-3.0, requires_grad=True)
    c = Tensor(10.0, requires_grad=True)
    L = (a * b + c) ** 2  # tensors: a, b, c, a·b, a·b+c, const 2, L; ops: mul, add, pow
    L.backward()
    fig = viz.draw_graph(L, names={"a": a, "b": b, "L": L})
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    circles = [p for p in ax.patches if isinstance(p, Circle)]
    assert len(boxes) == 7 and len(circles) == 3
    texts = _texts(ax)
    assert len(texts) == 10
    assert len(ax.texts) - len(texts) == 9  # one arrow per edge
    assert sorted(t for t in texts if t in ("mul", "add", "pow")) == ["add", "mul", "pow"]
    assert "a = 2\ngrad -24" in texts and "b = -3\ngrad 16" in texts
    assert "const 2" in texts and "L = 16" in texts  # non-leaf: no .grad kept
    assert ax.get_title() == "computation graph of L"
    _render(fig)


def test_draw_graph_diamond_and_repeated_parent():
    x = Tensor(3.0, requires_grad=True)
    y = (x * 2) * (x * x)  # x feeds two ops, and one of them twice
    y.backward()
    fig = viz.draw_graph(y, names={"x": x}, title="diamond")
    ax = fig.axes[0]
    assert ax.get_title() == "diamond"
    assert sum(isinstance(p, Circle) for p in ax.patches) == 3
    # One arrow per edge: x→mul twice, x→mul, 2→mul, two mul→mul, plus op→result ×3.
    assert len([t for t in ax.texts if t.get_text() == ""]) == 9
    assert "x = 3\ngrad 54" in _texts(ax)
    _render(fig)


def test_draw_graph_shows_shapes_of_arrays():
    w = Tensor(np.ones((2, 3)), requires_grad=True)
    fig = viz.draw_graph(w.sum())
    assert "shape 2×3" in _texts(fig.axes[0])


def test_draw_graph_into_given_axes():
    fig = Figure()
    ax = fig.add_subplot()
    x = Tensor(1.0, requires_grad=True)
    assert viz.draw_graph(x * x, ax=ax) is fig


def test_show_matrix_image_and_annotations():
    m = np.arange(6.0).reshape(2, 3)
    fig = viz.show_matrix(m, title="m", boxes=[(0, 1, 2, 1)], colorbar=True)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), m)
    assert _texts(ax) == ["0", "1", "2", "3", "4", "5"]
    assert ax.get_title() == "m" and ax.get_xlabel() == "column"
    assert len(ax.patches) == 1 and len(fig.axes) == 2  # the box, and the colorbar
    _render(fig)


def test_show_matrix_accepts_tensors_and_rejects_3d():
    fig = viz.show_matrix(Tensor(np.eye(2)), annotate=False)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), np.eye(2))
    assert len(fig.axes[0].texts) == 0
    with pytest.raises(ValueError, match="2-D"):
        viz.show_matrix(np.zeros((2, 2, 2)))


def test_show_matrices_with_symbols_between():
    a, b = np.ones((1, 3)), np.arange(6.0).reshape(3, 2)
    fig = viz.show_matrices([a, b, a @ b], ["W", "cols", "out"], ["@", "="], suptitle="GEMM")
    assert len(fig.axes) == 5
    for ax, m in zip(fig.axes[::2], [a, b, a @ b]):
        np.testing.assert_array_equal(ax.images[0].get_array(), m)
    assert [ax.texts[0].get_text() for ax in fig.axes[1::2]] == ["@", "="]
    assert fig.axes[2].get_title() == "cols"
    _render(fig)
    with pytest.raises(ValueError, match="symbols"):
        viz.show_matrices([a, b], between=["@", "="])


def test_show_im2col_right_panel_is_im2col():
    img = np.arange(16.0).reshape(4, 4)
    fig = viz.show_im2col(img, kernel=3, padding=1, positions=[0, 5])
    left, right = fig.axes[:2]
    np.testing.assert_array_equal(left.images[0].get_array(), np.pad(img, 1))
    expected = im2col(img[None, None], ConvGeometry.make(3, 1, 1, 1))[0]
    np.testing.assert_array_equal(right.images[0].get_array(), expected)
    # Two windows: 9 tap squares each on the left (+ the dashed image outline),
    # one column outline each on the right.
    assert len(left.patches) == 2 * 9 + 1
    assert len(right.patches) == 2
    _render(fig)


def test_show_kernel_taps_marks_every_tap():
    fig = viz.show_kernel_taps(7, kernel=3, stride=2, padding=1, dilation=1, positions=[0, 1])
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    xs, ys = ax.lines[0].get_data()
    assert len(xs) == 9 and sorted(set(ys)) == [0, 1, 2]
    assert "7×7 → 4×4" in ax.get_title()
    # Dilation 2 spreads the taps of a 3×3 kernel over a 5×5 area.
    ax = viz.show_kernel_taps((5, 6), kernel=3, dilation=2, positions=0).axes[0]
    _, ys = ax.lines[0].get_data()
    assert sorted(set(ys)) == [0, 2, 4]
    assert ax.patches and len(ax.patches) == 5 * 6


def test_show_overlap_counts():
    g = ConvGeometry.make(3, 1, 1, 1)
    counts = col2im(np.ones((1, 9, 16)), (1, 1, 4, 4), g)[0, 0]
    fig = viz.show_overlap_counts(counts)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), counts)
    assert _texts(ax)[:4] == ["4", "6", "6", "4"]
    assert len(fig.axes) == 2  # the heatmap and its colorbar
    _render(fig)
