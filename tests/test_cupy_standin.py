"""The CuPy stand-in itself: it must refuse what CuPy refuses, or the device tests prove nothing.

Each rule is checked against CuPy's documented behaviour (and its source,
``cupy/_core/core.pyx`` and ``_routines_indexing.pyx``, as cited in
``tests/cupy_standin.py``). Where the real CuPy is importable, its function
signatures are compared with the stand-in's.
"""

import inspect

import numpy as np
import pytest

from tests import cupy_standin as cp


def test_implicit_conversion_to_numpy_is_refused():
    x = cp.arange(6.0).reshape(2, 3)
    for convert in (np.asarray, np.array, lambda a: np.asarray([a[0, 0], a[0, 1]]),
                    lambda a: a.__array__()):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
            convert(x)
    np.testing.assert_array_equal(x.get(), [[0, 1, 2], [3, 4, 5]])  # the explicit way
    np.testing.assert_array_equal(cp.asnumpy(x), x.get())


def test_matplotlib_and_pillow_cannot_read_device_arrays():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    x = cp.zeros((4, 4), dtype=np.uint8)
    fig, ax = plt.subplots()
    try:
        with pytest.raises(TypeError, match="Implicit conversion"):
            ax.imshow(x)
    finally:
        plt.close(fig)
    with pytest.raises(AttributeError, match="__array_interface__"):  # as with a real CuPy array
        Image.fromarray(x)


def test_host_arrays_do_not_mix_with_device_arrays_but_scalars_do():
    x = cp.arange(3.0)
    host = np.ones(3)
    for mix in (lambda: x + host, lambda: host + x, lambda: x * np.asarray(2.0),
                lambda: cp.maximum(x, host), lambda: cp.where(host > 0, x, 0),
                lambda: cp.concatenate([x, host]), lambda: x.__setitem__(0, host[:1])):
        with pytest.raises(TypeError, match="Unsupported type"):
            mix()
    for scalar in (2, 2.0, np.float64(2), np.int32(2), True):
        np.testing.assert_array_equal((x * scalar).get(), x.get() * scalar)
    assert isinstance(np.exp(x), cp.ndarray)  # NumPy ufuncs dispatch to the device, as on CuPy
    assert isinstance(np.concatenate([x, x]), cp.ndarray)


def test_signatures_follow_cupy():
    x = cp.arange(4.0)
    with pytest.raises(TypeError, match="initial"):
        x.max(initial=0)
    with pytest.raises(TypeError, match="initial"):
        cp.amax(x, initial=0)
    with pytest.raises(TypeError, match="where"):
        cp.sum(x, where=x > 0)
    with pytest.raises(ValueError, match="kind"):
        cp.argsort(x, kind="quicksort")
    with pytest.raises(TypeError, match="cupy.ndarray"):
        cp.take_along_axis(x, np.array([0, 1]), axis=0)
    assert isinstance(x.sum(), cp.ndarray) and x.sum().shape == ()  # 0-d device arrays
    assert isinstance(x[1], cp.ndarray)


def test_traffic_is_counted():
    with cp.counting() as traffic:
        x = cp.asarray(np.arange(5))  # host → device
        y = x[np.array([0, 2])]  # a host index array is copied over, as CuPy does
        z = x[x > 2]  # a boolean mask: CuPy counts its True values on the host
        cp.flatnonzero(x)  # output size from the data
        float(x[0]), int(x[1]), bool(x[2]), x.sum().item(), x.tolist()
        y.get(), cp.asnumpy(z)
    assert (traffic.h2d, traffic.d2h) == (2, 2)
    assert traffic.syncs == 2 + 5 + 2  # mask and flatnonzero, five conversions, two copies
    assert all(where for _, _, where in traffic.log)  # each names its caller


def test_views_write_through_like_device_memory():
    x = cp.zeros(6)
    view = x[2:4]
    view += 1
    x.reshape(2, 3)[1] = 5
    np.testing.assert_array_equal(x.get(), [0, 0, 1, 5, 5, 5])


def test_function_signatures_match_the_real_cupy():
    cupy = pytest.importorskip("cupy", reason="compares with the real CuPy when it is installed")
    for name in cp._FUNCTIONS:
        real = inspect.signature(getattr(cupy, name))
        ours = inspect.signature(getattr(cp, name))
        assert list(real.parameters) == list(ours.parameters), name
