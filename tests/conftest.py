import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["slurm_cluster"]


@pytest.fixture
def backend_registry() -> dict:
    """The cluster backends, restored after a test registers its own."""
    from lit_dendrite.sweeps.backends import BACKENDS

    saved = dict(BACKENDS)
    yield BACKENDS
    BACKENDS.clear()
    BACKENDS.update(saved)


@pytest.fixture
def attack_registry():
    """The attack and engine registries, restored after a test registers its own."""
    from lit_dendrite.robustness.attacks import ATTACKS, ENGINES

    saved = dict(ATTACKS), dict(ENGINES)
    yield ATTACKS
    for registry, entries in zip((ATTACKS, ENGINES), saved):
        registry.clear()
        registry.update(entries)
