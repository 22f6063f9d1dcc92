"""Computation graphs: the tensors and ops that produced a Tensor, leaves on the left."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch

from minifpn.autograd import topological_order
from minifpn.viz._common import _as_numpy, _new_axes


def _graph(root):
    """All tensors reachable from ``root`` through ``_parents``, parents first."""
    return topological_order(root, needing_grad=False)[::-1]


def _short(array) -> str:
    """A one-line summary of an array: its value if it has one, else its shape."""
    a = _as_numpy(array)
    if a.size == 1:
        return f"{a.item():.4g}"
    return "shape " + "×".join(str(n) for n in a.shape)


def _spread(wanted: list[float]) -> list[float]:
    """Positions near ``wanted`` (sorted order kept) at least 1 apart."""
    order = np.argsort(wanted, kind="stable")
    placed = np.empty(len(wanted))
    previous = -np.inf
    for i in order:
        previous = max(wanted[i], previous + 1.0)
        placed[i] = previous
    # Re-centre on the wanted positions so a column does not drift downwards.
    placed += np.mean(wanted) - placed.mean()
    return placed.tolist()


#: Layout, in data units: distance between columns, a tensor's box, an op's circle.
STEP, BOX_W, BOX_H, OP_RADIUS = 1.7, 1.35, 0.78, 0.33


def draw_graph(root, names: Mapping[str, object] | None = None, ax=None, title=None) -> Figure:
    """Draw the computation graph that produced ``root``, leaves on the left.

    Tensors are boxes showing their value (or shape) and, once a backward
    pass has run, their ``.grad``; each op is a circle named by ``_op``.
    Arrows follow the forward pass: parent → op → result.

    Args:
        root: the Tensor to start from (usually a loss); the graph is found
            by walking ``_parents`` back from it.
        names: optional ``{"a": a, ...}`` labels for some tensors.
        ax: draw into this axes instead of a new figure.
        title: the figure title (default "computation graph of <root name>").

    Returns:
        The figure. Its axes holds one text per tensor and one per op.
    """
    label_of = {id(t): name for name, t in (names or {}).items()}
    nodes = _graph(root)
    column, row = _layout(nodes)
    n_cols = max(column.values()) + 1
    ys = list(row.values())
    # About 0.7 inch per data unit: the 10-point labels stay readable when a notebook
    # shrinks a wide graph to the page width.
    fig, ax = _new_axes(ax, (0.7 * STEP * n_cols + 0.4, 0.7 * (max(ys) - min(ys) + 1) + 0.8))

    def xy(key):
        return column[key] * STEP, -row[key]

    for t in nodes:
        _draw_tensor(ax, t, xy(("t", id(t))), label_of.get(id(t), ""), t is root)
        if t._parents:
            _draw_op(ax, t, xy(("op", id(t))), xy(("t", id(t))),
                     [xy(("t", id(p))) for p in t._parents])
    ax.set_xlim(-BOX_W / 2 - 0.2, (n_cols - 1) * STEP + BOX_W / 2 + 0.2)
    ax.set_ylim(-max(ys) - BOX_H / 2 - 0.2, -min(ys) + BOX_H / 2 + 0.2)
    ax.set_aspect("equal")
    ax.axis("off")
    root_name = label_of.get(id(root), root._op or "tensor")
    ax.set_title(title or f"computation graph of {root_name}")
    return fig


def _layout(nodes) -> tuple[dict, dict]:
    """Column and row of every tensor ``("t", id)`` and op ``("op", id)`` of the graph.

    A tensor's column is twice its depth (its longest path from a leaf), its
    op just left of it; rows put each op level with its inputs and each
    result level with its op, spread so that nothing overlaps.
    """
    consumers: dict[int, list] = {}
    for t in nodes:
        for p in t._parents:
            consumers.setdefault(id(p), []).append(t)
    depth = {}
    for t in nodes:  # parents come first, so their depths are known
        depth[id(t)] = 1 + max((depth[id(p)] for p in t._parents), default=-1)
    for t in reversed(nodes):  # constants sit just left of the op that uses them
        if not t._parents and not t.requires_grad and id(t) in consumers:
            depth[id(t)] = min(depth[id(c)] for c in consumers[id(t)]) - 1

    # Columns: tensors at even columns 2·depth, an op just left of its result.
    column, row = {}, {}
    columns: dict[int, list] = {}
    for t in nodes:
        d = depth[id(t)]
        column[("t", id(t))] = 2 * d
        columns.setdefault(2 * d, []).append(("t", t))
        if t._parents:
            column[("op", id(t))] = 2 * d - 1
            columns.setdefault(2 * d - 1, []).append(("op", t))
    for c in sorted(columns):
        entries = columns[c]
        if c == 0:
            wanted = [float(i) for i in range(len(entries))]
        else:
            wanted = []
            for kind, t in entries:
                if kind == "op":
                    wanted.append(float(np.mean([row[("t", id(p))] for p in t._parents])))
                elif t._parents:
                    wanted.append(row[("op", id(t))])
                else:  # a constant: just below the other inputs of its op
                    user = consumers[id(t)][0]
                    others = [row[("t", id(p))] for p in user._parents if ("t", id(p)) in row]
                    wanted.append(max(others) + 0.6 if others else float(len(wanted)))
        for (kind, t), y in zip(entries, _spread(wanted)):
            row[(kind, id(t))] = y
    return column, row


def _draw_tensor(ax, t, at, name: str, is_root: bool) -> None:
    """A tensor's box at ``at``: its name and value (or shape), and its gradient if it has one."""
    x, y = at
    value = _short(t.data)
    if name:
        lines = [f"{name} = {value}" if "shape" not in value else f"{name}: {value}"]
    else:
        lines = [("" if t.requires_grad or t._parents else "const ") + value]
    if t.grad is not None:
        lines.append("grad " + _short(t.grad))
    color = "#fde9c9" if is_root else ("#dbe9f6" if t.requires_grad else "#eeeeee")
    ax.add_patch(FancyBboxPatch((x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H,
                                boxstyle="round,pad=0.02", fc=color, ec="0.3", zorder=2))
    ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=10, zorder=3)


def _draw_op(ax, t, at, result, parents) -> None:
    """The op that made ``t``: a circle at ``at``, arrows from its parents and to its result."""
    ox, oy = at
    x, y = result
    ax.add_patch(Circle((ox, oy), OP_RADIUS, fc="white", ec="0.3", zorder=2))
    ax.text(ox, oy, t._op, ha="center", va="center", fontsize=9, zorder=3)
    _arrow(ax, (ox + OP_RADIUS, oy), (x - BOX_W / 2, y))
    for k, (p, (px, py)) in enumerate(zip(t._parents, parents)):
        dx, dy = ox - px, oy - py
        norm = max(np.hypot(dx, dy), 1e-9)
        # The same tensor used twice (x * x): bend the two edges apart.
        same = [i for i, q in enumerate(t._parents) if q is p]
        bend = 0.0 if len(same) == 1 else 0.3 * (same.index(k) - (len(same) - 1) / 2)
        _arrow(ax, (px + BOX_W / 2, py),
               (ox - OP_RADIUS * dx / norm, oy - OP_RADIUS * dy / norm), bend)


def _arrow(ax, start, end, bend=0.0):
    """An arrow from ``start`` to ``end`` in data coordinates, optionally curved."""
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        zorder=1,
        arrowprops=dict(
            arrowstyle="-|>",
            color="0.35",
            shrinkA=0,
            shrinkB=0,
            lw=1,
            connectionstyle=f"arc3,rad={bend}",
        ),
    )
