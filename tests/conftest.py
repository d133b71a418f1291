"""Shared test setup.

- One torch thread per test process (the machine has 2 cores and tests run with -n 2).
- Every test starts from the same global random state, so a result never depends on which tests ran before it in
  the same worker (pytest-xdist hands tests to workers in a different order on every run).
"""

import random
from typing import Iterator

import numpy as np
import pytest
import torch as th

th.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_global_seed() -> None:
    random.seed(0)
    np.random.seed(0)
    th.manual_seed(0)


@pytest.fixture
def torch_path() -> Iterator[None]:
    """The quadrature estimators without the compiled kernel (sb3_gmm.native): its torch path, whatever
    the machine's compiler."""
    from sb3_gmm import native

    with native.disabled():
        yield
