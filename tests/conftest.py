"""Shared fixtures: a Gaussian-mixture scene with a known client component."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def mixture():
    """Open pool: 5 well-separated components x 1000 points (d=32); client: 400 points of component 2."""
    rng = np.random.default_rng(0)
    d = 32
    means = rng.normal(size=(5, d)) * 4.0
    open_features = np.concatenate([m + rng.normal(size=(1000, d)) for m in means]).astype(np.float32)
    component = np.repeat(np.arange(5), 1000)
    client_features = (means[2] + rng.normal(size=(400, d))).astype(np.float32)
    return open_features, component, client_features
