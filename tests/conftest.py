"""Shared test configuration.

* Triton runs in its CPU interpreter when no CUDA device is present. TRITON_INTERPRET must be set
  before triton is first imported, so it is decided here, before any test module loads.
* Hypothesis uses a fixed-seed, no-deadline profile ("ci") unless HYPOTHESIS_PROFILE names another.
* The slow tests run first (pytest_collection_modifyitems).
"""

import os

# pytest -n N: N workers share the cores, one thread each (and their
if os.environ.get("PYTEST_XDIST_WORKER"):
    # subprocesses): threads beside a busy process wait on each other
    os.environ.setdefault("OMP_NUM_THREADS", "1")

if "TRITON_INTERPRET" not in os.environ:
    import torch  # importing torch does not import triton

    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=30,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))



def pytest_collection_modifyitems(items):
    """The slow tests first (a stable sort, so the order is the same in every xdist worker): under
    `pytest -n N` the long runs start at once and the short tests fill in around them, so that the
    workers finish together instead of one running a long test at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
