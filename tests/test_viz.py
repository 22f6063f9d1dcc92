"""The lesson pictures draw what they claim to draw (Agg backend, tiny inputs)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
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


def test_show_matrix_fixed_colour_range():
    m = np.array([[0.1, 0.3]])
    auto = viz.show_matrix(m).axes[0]
    fixed = viz.show_matrix(m, vmin=0.0, vmax=1.0).axes[0]
    assert auto.images[0].get_clim() == (0.1, 0.3)
    assert fixed.images[0].get_clim() == (0.0, 1.0)
    # 0.3 is the top of the automatic range (viridis: yellow, dark text) but low on [0, 1]
    # (dark purple, light text): the annotations follow the range given.
    assert [t.get_color() for t in auto.texts] == ["white", "black"]
    assert [t.get_color() for t in fixed.texts] == ["white", "white"]


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
    assert len(ax.patches) == 5 * 6 + 1  # the grid, then the window's outline
    window = ax.patches[-1]
    assert (window.get_x(), window.get_y(), window.get_width(), window.get_height()) == (
        -0.5, -0.5, 5, 5)


def test_show_overlap_counts():
    g = ConvGeometry.make(3, 1, 1, 1)
    counts = col2im(np.ones((1, 9, 16)), (1, 1, 4, 4), g)[0, 0]
    fig = viz.show_overlap_counts(counts)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), counts)
    assert _texts(ax)[:4] == ["4", "6", "6", "4"]
    assert len(fig.axes) == 2  # the heatmap and its colorbar
    _render(fig)


# ---------------------------------------------------------------------------
# Feature maps and receptive fields.
# ---------------------------------------------------------------------------
def _pyramid(rng, names=("P2", "P3", "P4"), channels=4, size=(16, 24)):
    """Random maps named like pyramid levels, halving in size level by level."""
    h, w = size
    return {
        name: rng.standard_normal((1, channels, -(-h // 2**i), -(-w // 2**i)))
        for i, name in enumerate(names)
    }


def test_channel_energy_kinds():
    f = np.zeros((2, 3, 3))
    f[0, 1, 1], f[1, 1, 1] = 3.0, -4.0
    np.testing.assert_allclose(viz.channel_energy(f, "l2")[1, 1], 5.0)
    np.testing.assert_allclose(viz.channel_energy(f, "rms")[1, 1], 5.0 / np.sqrt(2))
    np.testing.assert_allclose(viz.channel_energy(f[None], "mean_abs")[1, 1], 3.5)
    assert viz.channel_energy(Tensor(f)).shape == (3, 3)
    assert viz.channel_energy(f).sum() == viz.channel_energy(f)[1, 1]
    with pytest.raises(ValueError, match="unknown energy kind"):
        viz.channel_energy(f, "max")
    with pytest.raises(ValueError, match="feature map"):
        viz.channel_energy(np.zeros((2, 2, 3, 3)))


def test_show_feature_levels_titles_and_energy_maps():
    rng = np.random.default_rng(0)
    features = _pyramid(rng)
    image = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)
    fig = viz.show_feature_levels(features, image=image, title="levels")
    assert isinstance(fig, Figure)
    # The image, then each level followed by its colour bar.
    assert len(fig.axes) == 1 + 2 * len(features)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), image)
    panels = fig.axes[1::2]
    assert [ax.get_title() for ax in panels] == [
        "P2 · stride 4 · 16×24",
        "P3 · stride 8 · 8×12",
        "P4 · stride 16 · 4×6",
    ]
    for ax, f in zip(panels, features.values()):
        np.testing.assert_allclose(ax.images[0].get_array(), viz.channel_energy(f))
        assert ax.get_xlabel() and ax.get_ylabel()
    assert fig._suptitle.get_text() == "levels"
    _render(fig)


def test_show_feature_levels_rows_are_aligned_by_level():
    rng = np.random.default_rng(1)
    bottom_up = _pyramid(rng, names=("C2", "C3"))
    pyramid = _pyramid(rng, names=("P2", "P3", "P4"))
    fig = viz.show_feature_levels(
        [bottom_up, pyramid], row_labels=["C", "P"], colorbar=False, kind="mean_abs"
    )
    assert len(fig.axes) == 5
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("C2 · stride 4") and titles[2].startswith("P2 · stride 4")
    # C3 sits in the same grid column as P3.
    column = {
        t.split(" ")[0]: ax.get_subplotspec().colspan.start for t, ax in zip(titles, fig.axes)
    }
    assert column["C2"] == column["P2"] and column["C3"] == column["P3"] != column["P4"]
    assert fig.axes[0].get_ylabel().startswith("C") and fig.axes[2].get_ylabel().startswith("P")
    np.testing.assert_allclose(
        fig.axes[1].images[0].get_array(), viz.channel_energy(bottom_up["C3"], "mean_abs")
    )
    assert "mean |activation|" in fig._suptitle.get_text()
    _render(fig)


def test_show_feature_levels_shared_column_scale_and_strides():
    rng = np.random.default_rng(2)
    a = {"x": rng.standard_normal((3, 8, 8)), "y": rng.standard_normal((3, 4, 4))}
    b = {"x": 10 * a["x"], "y": a["y"]}
    fig = viz.show_feature_levels([a, b], share_columns=True, strides={"x": 2}, colorbar=False)
    # Names without a level number: columns by position, stride only where given.
    assert [ax.get_title() for ax in fig.axes] == ["x · stride 2 · 8×8", "y · 4×4"] * 2
    vmax_a = fig.axes[0].images[0].get_clim()[1]
    vmax_b = fig.axes[2].images[0].get_clim()[1]
    assert vmax_a == vmax_b == pytest.approx(viz.channel_energy(b["x"]).max())
    with pytest.raises(ValueError, match="row labels"):
        viz.show_feature_levels([a, b], row_labels=["only one"])
    with pytest.raises(ValueError, match="non-empty"):
        viz.show_feature_levels({})


def test_show_channels_one_row_per_level():
    rng = np.random.default_rng(3)
    features = _pyramid(rng, names=("P3", "P4"), channels=5)
    fig = viz.show_channels(features, [0, 4], title="two channels")
    # Per row: two panels, then the row's colour bar.
    assert len(fig.axes) == 2 * (2 + 1)
    p3_panels, p4_panels = fig.axes[0:2], fig.axes[3:5]
    assert [ax.get_title() for ax in p3_panels] == ["P3 · channel 0", "P3 · channel 4"]
    assert "P4 · 8×12" in p4_panels[0].get_ylabel()
    np.testing.assert_array_equal(p4_panels[1].images[0].get_array(), features["P4"][0, 4])
    # Signed values: a diverging scale, symmetric around zero, shared in the row.
    low, high = p3_panels[0].images[0].get_clim()
    assert low == -high == -np.abs(features["P3"][0, [0, 4]]).max()
    assert p3_panels[1].images[0].get_clim() == (low, high)
    assert fig.axes[2].get_ylabel() == "activation"
    _render(fig)


def test_show_channels_with_a_scale_per_panel():
    relu_map = np.abs(np.random.default_rng(5).standard_normal((3, 6, 6)))
    relu_map[1] *= 10  # a strong channel would wash out a weak one on a shared scale
    fig = viz.show_channels(relu_map, [0, 1], shared_scale=False)
    assert len(fig.axes) == 2 * 2  # each panel followed by its own colour bar
    weak, strong = fig.axes[0], fig.axes[2]
    assert weak.images[0].get_clim() == (0.0, np.percentile(relu_map[0], 99.5))
    assert strong.images[0].get_clim() == (0.0, np.percentile(relu_map[1], 99.5))
    _render(fig)


def test_show_channels_non_negative_map_and_bad_index():
    relu_map = np.abs(np.random.default_rng(4).standard_normal((3, 6, 6)))
    fig = viz.show_channels(relu_map, [2])
    ax = fig.axes[0]
    assert ax.images[0].get_clim()[0] == 0.0 and ax.images[0].get_cmap().name == "viridis"
    assert ax.get_title() == "channel 2"
    with pytest.raises(ValueError, match="3 channels"):
        viz.show_channels(relu_map, [3])


def test_nonzero_extent():
    grad = np.zeros((1, 3, 10, 12))
    assert viz.nonzero_extent(grad) is None
    grad[0, 1, 2, 3] = 1.0
    grad[0, 2, 6, 9] = -1e-30  # tiny but not zero: still inside the field
    assert viz.nonzero_extent(grad) == (2, 3, 6, 9)


def test_draw_receptive_field_marks_theory_and_measurement():
    grad = np.zeros((3, 21, 21))
    yy, xx = np.mgrid[:21, :21]
    inside = (np.abs(yy - 10) <= 3) & (np.abs(xx - 10) <= 3)  # a 7×7 field around (10, 10)
    grad[1][inside] = np.exp(-((yy - 10) ** 2 + (xx - 10) ** 2) / 4.0)[inside]
    fig = viz.draw_receptive_field(grad, center=(10, 10), size=9, title="rf")
    left, profile, bar = fig.axes
    magnitude = np.abs(grad).sum(axis=0)
    np.testing.assert_allclose(left.images[0].get_array().filled(0), magnitude / magnitude.max())
    theory, measured = left.patches
    assert (theory.get_width(), theory.get_height()) == (9, 9)
    assert theory.get_xy() == (10 - 4 - 0.5, 10 - 4 - 0.5)
    assert (measured.get_width(), measured.get_height()) == (7, 7)
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert labels == ["theoretical: 9×9", "non-zero gradient: 7×7"]
    assert profile.get_yscale() == "log" and profile.get_xlabel() == "input x (pixels)"
    assert "log" in bar.get_ylabel()
    assert len(profile.lines[0].get_xdata()) == 7  # the non-zero pixels of the centre row
    assert fig._suptitle.get_text() == "rf"
    _render(fig)
    with pytest.raises(ValueError, match="zero everywhere"):
        viz.draw_receptive_field(np.zeros((3, 5, 5)), center=(2, 2), size=3)


# ---------------------------------------------------------------------------
# Boxes, anchors, RoI sampling, masks and loss curves.
# ---------------------------------------------------------------------------
def _rectangles(ax):
    from matplotlib.patches import Rectangle

    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_draw_boxes_rectangles_labels_and_groups():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    boxes = np.array([[1.0, 2.0, 11.0, 22.0], [30.0, 5.0, 50.0, 15.0], [5.0, 5.0, 9.0, 9.0]])
    fig = viz.draw_boxes(
        image,
        boxes,
        labels=["a", "b", "c"],
        groups=[3, 2, 3],
        group_names={2: "P2", 3: "P3"},
        title="boxes",
    )
    ax = fig.axes[0]
    rects = _rectangles(ax)
    assert len(rects) == 3
    for rect, (x1, y1, x2, y2) in zip(rects, boxes):
        assert rect.get_xy() == (x1, y1)
        assert (rect.get_width(), rect.get_height()) == (x2 - x1, y2 - y1)
    # One colour per group, the same for both P3 boxes, different for P2.
    assert rects[0].get_edgecolor() == rects[2].get_edgecolor() != rects[1].get_edgecolor()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["P2 (1)", "P3 (2)"]
    # Colours follow group_names' order: P2 is the first colour, P3 the second …
    assert rects[1].get_edgecolor() == matplotlib.colors.to_rgba(viz.GROUP_COLORS[0])
    assert rects[0].get_edgecolor() == matplotlib.colors.to_rgba(viz.GROUP_COLORS[1])
    # … also in a figure where P2 does not occur: one colour per level across figures.
    only_p3 = viz.draw_boxes(None, boxes[:1], groups=[3], group_names={2: "P2", 3: "P3"})
    assert _rectangles(only_p3.axes[0])[0].get_edgecolor() == rects[0].get_edgecolor()
    assert _texts(ax) == ["a", "b", "c"]
    np.testing.assert_array_equal(ax.images[0].get_array(), image)
    assert ax.get_title() == "boxes"
    _render(fig)


def test_draw_boxes_without_image_fits_boxes_and_adds_to_axes():
    fig = viz.draw_boxes(None, np.array([[10, 20, 30, 60]]), colors="tab:green")
    ax = fig.axes[0]
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert x0 < 10 and x1 > 30 and y0 > 60 and y1 < 20  # y points down, as in an image
    again = viz.draw_boxes(
        None, np.array([[0, 0, 5, 5], [1, 1, 2, 2]]), ax=ax, colors=["red", "blue"]
    )
    assert again is fig and len(_rectangles(ax)) == 3
    assert len(viz.draw_boxes(None, np.zeros((0, 4))).axes[0].patches) == 0
    with pytest.raises(ValueError, match="colours"):
        viz.draw_boxes(None, np.ones((2, 4)), colors=["red", "blue", "green"])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        viz.draw_boxes(None, np.ones((2, 3)))


def test_draw_anchors_one_panel_per_level_with_the_nearest_cells_anchors():
    from minifpn.models.anchors import AnchorGenerator

    generator = AnchorGenerator(sizes=(16, 32), aspect_ratios=(0.5, 1.0, 2.0))
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    anchors = generator((32, 48), [(8, 12), (4, 6)])  # strides 4 and 8
    fig = viz.draw_anchors(image, anchors, names=["P2", "P3"], point=(20, 13))
    assert len(fig.axes) == 2
    for ax, level_anchors, (h, w) in zip(fig.axes, anchors, [(8, 12), (4, 6)]):
        xs, ys = ax.lines[0].get_data()
        assert len(xs) == h * w  # one dot per cell
        rects = _rectangles(ax)[:3]  # the three anchors (the image outline comes last)
        drawn = np.array(
            [
                [r.get_x(), r.get_y(), r.get_x() + r.get_width(), r.get_y() + r.get_height()]
                for r in rects
            ]
        )
        centre = (drawn[0, :2] + drawn[0, 2:]) / 2
        # They are three consecutive anchors of the generator, of the cell nearest (20, 13).
        centres = (level_anchors[::3, :2] + level_anchors[::3, 2:]) / 2
        nearest = np.argmin(((centres - [20, 13]) ** 2).sum(axis=1))
        np.testing.assert_allclose(drawn, level_anchors[3 * nearest : 3 * nearest + 3])
        np.testing.assert_allclose(centre, centres[nearest])
    assert fig.axes[0].get_title() == "P2 · stride 4 · 8×12 cells\nanchors 22×12, 16×16, 12×22"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["h/w ≈ 0.5", "h/w ≈ 1", "h/w ≈ 2"]
    # Every panel shows the same region: the image and the largest anchor drawn.
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()
    _render(fig)
    # A level with many cells shows every k-th row and column of centres only.
    dense = viz.draw_anchors(image, anchors, names=["P2", "P3"], max_dots=30)
    xs, _ = dense.axes[0].lines[0].get_data()
    assert len(xs) == 4 * 6 and "a dot per 2×2 cells" in dense.axes[0].get_title()
    with pytest.raises(ValueError, match="names"):
        viz.draw_anchors(image, anchors, names=["P2"])


@pytest.mark.parametrize("aligned", [False, True])
def test_draw_sampling_grid_points_are_roi_aligns(aligned):
    from minifpn.ops import roi_align

    box, size, bins = (3.0, 2.0, 15.0, 11.0), (6, 8), (2, 3)
    fig = viz.draw_sampling_grid(
        box, size, bins, spatial_scale=0.5, sampling_ratio=2, aligned=aligned
    )
    ax = fig.axes[0]
    samples = next(line for line in ax.lines if line.get_gid() == "samples")
    xs, ys = (np.asarray(v).reshape(2, 3, 4) for v in samples.get_data())  # (PH, PW, 2·2)
    # Bilinear interpolation of a linear ramp is exact: each bin's RoIAlign output is
    # the ramp at the mean of its samples. Drawn points sit at RoIAlign coordinate + ½.
    ramp_x = np.tile(np.arange(8.0), (6, 1))[None, None]
    ramp_y = np.tile(np.arange(6.0)[:, None], (1, 8))[None, None]
    rois = np.array([[0.0, *box]])
    out_x = roi_align(ramp_x, rois, bins, 0.5, 2, aligned).numpy()[0, 0]
    out_y = roi_align(ramp_y, rois, bins, 0.5, 2, aligned).numpy()[0, 0]
    np.testing.assert_allclose(xs.mean(axis=2) - 0.5, out_x, atol=1e-6)
    np.testing.assert_allclose(ys.mean(axis=2) - 0.5, out_y, atol=1e-6)
    # The box itself is drawn at box · scale; aligned=True centres the samples on it.
    drawn_box = _rectangles(ax)[0]
    assert drawn_box.get_xy() == (1.5, 1.0) and drawn_box.get_width() == 6.0
    assert list(ax.get_xticks()) == list(range(9))  # ticks on the cell edges: box units
    centre_x = xs.mean() if aligned else xs.mean() - 0.5
    assert centre_x == pytest.approx((1.5 + 7.5) / 2)
    assert f"aligned={aligned}" in ax.get_title()
    _render(fig)


def test_draw_sampling_grid_pool_shades_the_quantised_bins():
    from minifpn.ops import roi_pool

    # A box whose corners round to cells 1 and 4 (incl.): 4 cells, two bins of 2 per axis.
    box = (1.3, 0.6, 4.4, 3.5)
    fig = viz.draw_sampling_grid(box, (6, 6), 2, method="pool")
    ax = fig.axes[0]
    shaded = [r for r in _rectangles(ax) if r.get_fill()]
    assert len(shaded) == 4
    cells = sorted((r.get_y(), r.get_x(), r.get_height(), r.get_width()) for r in shaded)
    assert cells == [(1, 1, 2, 2), (1, 3, 2, 2), (3, 1, 2, 2), (3, 3, 2, 2)]
    # RoIPool takes the maximum over exactly those cells.
    values = np.random.default_rng(0).standard_normal((1, 1, 6, 6))
    out = roi_pool(values, np.array([[0.0, *box]]), 2).numpy()[0, 0]
    for y, x, h, w in cells:
        np.testing.assert_allclose(
            out[(y - 1) // 2, (x - 1) // 2], values[0, 0, y : y + h, x : x + w].max()
        )
    assert "RoIPool" in ax.get_title()
    _render(fig)
    with pytest.raises(ValueError, match="method"):
        viz.draw_sampling_grid(box, (6, 6), method="nearest")


def test_show_masks_blends_inside_masks_only():
    from matplotlib.colors import to_rgb

    image = np.full((10, 12, 3), 200, dtype=np.uint8)
    masks = np.zeros((2, 1, 10, 12))
    masks[0, 0, 1:4, 1:5] = 0.9
    masks[1, 0, 6:9, 6:10] = 0.4  # below the threshold: not drawn
    fig = viz.show_masks(
        image,
        masks,
        boxes=np.array([[1, 1, 5, 4], [6, 6, 10, 9]]),
        labels=["cat", "dog"],
        alpha=0.5,
        title="masks",
    )
    ax = fig.axes[0]
    shown = ax.images[0].get_array()
    base = 200 / 255
    np.testing.assert_allclose(shown[0, 0], [base] * 3)
    np.testing.assert_allclose(shown[7, 7], [base] * 3)
    expected = 0.5 * base + 0.5 * np.asarray(to_rgb(viz.GROUP_COLORS[0]))
    np.testing.assert_allclose(shown[2, 2], expected)
    assert len(_rectangles(ax)) == 2 and _texts(ax) == ["cat", "dog"]
    assert ax.get_title() == "masks"
    _render(fig)
    with pytest.raises(ValueError, match="do not match"):
        viz.show_masks(image, np.zeros((1, 5, 5)))


def test_plot_loss_curves_raw_and_smoothed():
    history = [{"a": 1.0 * i, "b": Tensor(np.float32(2.0))} for i in range(12)]
    fig = viz.plot_loss_curves(history, smooth=4, title="losses", total=True)
    ax = fig.axes[0]
    assert len(ax.lines) == 6  # raw + smoothed for a, b and the total
    raw_a, smooth_a = ax.lines[0], ax.lines[1]
    np.testing.assert_array_equal(raw_a.get_ydata(), np.arange(12.0))
    np.testing.assert_array_equal(smooth_a.get_xdata(), np.arange(3, 12))
    np.testing.assert_allclose(smooth_a.get_ydata(), np.arange(3, 12) - 1.5)
    np.testing.assert_allclose(ax.lines[5].get_ydata(), np.arange(3, 12) - 1.5 + 2.0)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["a (last 4: 9.5)", "b (last 4: 2)", "total (last 4: 11.5)"]
    assert ax.get_title() == "losses" and ax.get_xlabel() == "iteration"
    _render(fig)
    # A dict of lists works too; too few values for the window: the raw line only.
    fig = viz.plot_loss_curves({"loss": [3.0, 2.0]}, smooth=5, logy=True)
    assert len(fig.axes[0].lines) == 1 and fig.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match="no losses"):
        viz.plot_loss_curves({})


def test_legends_can_go_below_the_axes_where_they_cover_no_data():
    fig = viz.plot_loss_curves({"a": np.arange(20.0), "b": np.ones(20)}, smooth=3, legend="below")
    ax = fig.axes[0]
    fig.canvas.draw()
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.y1 <= ax.get_window_extent().y0  # entirely under the plotting area
    bars = viz.plot_bars({"x": {"a": 1.0}, "y": {"a": 2.0}}, legend="below").axes[0]
    bars.figure.canvas.draw()
    assert bars.get_legend().get_window_extent().y1 <= bars.get_window_extent().y0


def test_plot_bars_one_series_and_grouped():
    fig = viz.plot_bars({"a": 1.0, "b": 3.0}, title="one")
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [1.0, 3.0] and fig.axes[0].get_legend() is None
    fig = viz.plot_bars({"ours": {"C4": 0.2, "FPN": 0.4}, "paper": {"FPN": 0.56, "C4": 0.48}})
    ax = fig.axes[0]
    # series after series, categories in the order first seen (C4, FPN)
    assert [round(p.get_height(), 2) for p in ax.patches] == [0.2, 0.4, 0.48, 0.56]
    xs = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    assert xs[0] < xs[2] < xs[1] < xs[3]  # ours left of paper within each category
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ours", "paper"]
    with pytest.raises(ValueError, match="no values"):
        viz.plot_bars({})


def test_plot_gradient_norms_colours_each_part():
    norms = {"backbone.body.layer1": 2.0, "backbone.fpn.inner_blocks": 1.0, "rpn.head": 0.5,
             "roi_heads.box_head": 4.0, "other": 1.0}
    ax = viz.plot_gradient_norms(norms).axes[0]
    colours = [p.get_facecolor()[:3] for p in ax.patches]
    expected = [to_rgb(c) for c in ("tab:blue", "tab:green", "tab:orange", "tab:red", "0.5")]
    assert np.allclose(colours, expected)
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["body.layer1", "fpn.inner_blocks"]
    assert ax.get_yscale() == "log"
