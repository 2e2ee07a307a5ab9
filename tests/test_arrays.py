"""sorted_unique is np.unique for integers: the same values, dtype and order, whatever the input's shape."""

from __future__ import annotations

import numpy as np
import pytest

from rec_core.arrays import sorted_unique


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.uint64, np.bool_])
def test_sorted_unique_is_np_unique(dtype: type) -> None:
    rng = np.random.default_rng(4)
    info = np.iinfo(dtype) if dtype is not np.bool_ else None
    for n in (0, 1, 2, 17, 50_000):
        if info is None:
            values = rng.integers(0, 2, n).astype(bool)
        else:  # both ends of the type's range, many repeats
            values = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
            values[: n // 3] = values[n // 3 : 2 * (n // 3)]
        got = sorted_unique(values)
        want = np.unique(values)
        assert got.dtype == want.dtype
        assert np.array_equal(got, want)


def test_sorted_unique_flattens_and_leaves_its_input_alone() -> None:
    values = np.array([[3, 1, 3], [2, 1, 0]], dtype=np.int64)
    before = values.copy()
    assert sorted_unique(values).tolist() == [0, 1, 2, 3]
    assert np.array_equal(values, before)


def test_sorted_unique_refuses_what_is_not_integers() -> None:
    with pytest.raises(TypeError, match="float64"):
        sorted_unique(np.array([0.5, 0.5]))
    with pytest.raises(TypeError, match="<U1"):
        sorted_unique(np.array(["a", "b"]))
