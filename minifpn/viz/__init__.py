"""Small matplotlib pictures for the lessons: graphs, matrices, convolution windows,
feature maps, receptive fields, boxes, anchors, RoI sampling, masks and loss curves.

Every function here draws with matplotlib's object-oriented API and returns
the :class:`~matplotlib.figure.Figure` it drew on, so it works the same in a
notebook, in a script under the ``Agg`` backend, and in a test::

    from minifpn import viz
    fig = viz.show_matrix(np.arange(6).reshape(2, 3), title="a 2×3 matrix")
    fig.savefig("matrix.png")

In Jupyter, a figure that is the last expression of a cell is shown inline.
Functions that draw a single panel also accept ``ax=`` to draw into an
existing axes (then they return that axes' figure).

Nothing here changes how minifpn computes; the convolution pictures call the
real :func:`~minifpn.functional.conv.im2col` and the RoI sampling pictures the
ops' own sampling geometry, so what you see is what the library does.

Every name is importable from ``minifpn.viz``; each kind of picture lives in
its own module:

* :mod:`~minifpn.viz.graphs` — computation graphs (:func:`draw_graph`);
* :mod:`~minifpn.viz.matrices` — heatmaps of matrices (:func:`show_matrix`,
  :func:`show_matrices`);
* :mod:`~minifpn.viz.convolution` — convolution windows (:func:`show_im2col`,
  :func:`show_kernel_taps`, :func:`show_overlap_counts`);
* :mod:`~minifpn.viz.features` — feature maps per pyramid level
  (:func:`channel_energy`, :func:`show_feature_levels`, :func:`show_channels`);
* :mod:`~minifpn.viz.receptive_field` — receptive fields
  (:func:`nonzero_extent`, :func:`draw_receptive_field`);
* :mod:`~minifpn.viz.boxes` — boxes, anchors and masks on images
  (:func:`draw_boxes`, :func:`draw_anchors`, :func:`show_masks`);
* :mod:`~minifpn.viz.sampling` — RoIAlign / RoIPool sampling
  (:func:`draw_sampling_grid`);
* :mod:`~minifpn.viz.charts` — loss curves and bar charts
  (:func:`plot_loss_curves`, :func:`plot_bars`, :func:`plot_gradient_norms`);
* :mod:`~minifpn.viz._common` — what they share: the colour palettes
  (:data:`GROUP_COLORS`, :data:`WINDOW_COLORS`), box outlines (:func:`box_patch`)
  and :func:`save_figure`.
"""

from minifpn.viz._common import GROUP_COLORS, WINDOW_COLORS, box_patch, save_figure
from minifpn.viz.boxes import draw_anchors, draw_boxes, show_masks
from minifpn.viz.charts import PART_COLORS, plot_bars, plot_gradient_norms, plot_loss_curves
from minifpn.viz.convolution import show_im2col, show_kernel_taps, show_overlap_counts
from minifpn.viz.features import ENERGY_KINDS, channel_energy, show_channels, show_feature_levels
from minifpn.viz.graphs import draw_graph
from minifpn.viz.matrices import show_matrices, show_matrix
from minifpn.viz.receptive_field import draw_receptive_field, nonzero_extent
from minifpn.viz.sampling import draw_sampling_grid

__all__ = [
    "box_patch",
    "channel_energy",
    "draw_anchors",
    "draw_boxes",
    "draw_graph",
    "draw_receptive_field",
    "draw_sampling_grid",
    "nonzero_extent",
    "show_channels",
    "show_feature_levels",
    "show_im2col",
    "show_kernel_taps",
    "show_matrices",
    "plot_bars",
    "plot_gradient_norms",
    "plot_loss_curves",
    "save_figure",
    "show_masks",
    "show_matrix",
    "show_overlap_counts",
]
