"""``import convlayers`` stays light: SciPy, matplotlib, tqdm, numba and torch load when used."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import special

from convlayers.functional import sigmoid

HEAVY = ("scipy", "matplotlib", "tqdm", "numba", "torch")


def test_import_convlayers_loads_no_heavy_dependency() -> None:
    code = ("import sys, json, convlayers, convlayers.functional, convlayers.nn, convlayers.shapes; "
            f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_matches_scipy_expit_everywhere(dtype: type) -> None:
    x = np.concatenate([np.linspace(-80, 80, 20001), [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0,
                                                     np.inf, -np.inf, 800.0, -800.0]]).astype(dtype)
    got, want = sigmoid(x), special.expit(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=0)
    assert np.isnan(sigmoid(np.array([np.nan], dtype))).all()
