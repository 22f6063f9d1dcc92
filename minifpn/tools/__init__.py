"""Tools around the pipeline, for the lessons and for looking at a model: none is a stage of it.

* :mod:`~minifpn.tools.complexity` — how big and how expensive a model is
  (:func:`~minifpn.tools.complexity.count_parameters`,
  :func:`~minifpn.tools.complexity.count_macs`);
* :mod:`~minifpn.tools.gradstats` — how much gradient reaches each module and
  each feature map (:func:`~minifpn.tools.gradstats.gradient_norms`,
  :class:`~minifpn.tools.gradstats.OutputGradients`);
* :mod:`~minifpn.tools.layerstats` — the weights and the outputs of every layer, with dead
  and exploding layers flagged (:func:`~minifpn.tools.layerstats.weight_stats`,
  :func:`~minifpn.tools.layerstats.activation_stats`);
* :mod:`~minifpn.tools.ablations` — the FPN paper's Table 1 RPNs
  (:func:`~minifpn.tools.ablations.table1_rpn`);
* :mod:`~minifpn.tools.trained` — the lessons' trained detector, trained once and cached
  (:func:`~minifpn.tools.trained.shapes_detector`);
* :mod:`~minifpn.tools.exercises` — the lessons' answer checker
  (:func:`~minifpn.tools.exercises.check`);
* :mod:`~minifpn.tools.demo` — ``minifpn demo``, the autograd engine on a tiny CNN.

The pipeline itself — data, transform, backbone, FPN, RPN, RoI heads,
evaluation — is in :mod:`minifpn.data`, :mod:`minifpn.models`,
:mod:`minifpn.ops` and :mod:`minifpn.engine`.
"""
