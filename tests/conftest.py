"""Shared test configuration.

* Triton runs in its CPU interpreter when no CUDA device is present. TRITON_INTERPRET must be set
  before triton is first imported, so it is decided here, before any test module loads.
* Hypothesis uses a fixed-seed, no-deadline profile ("ci") unless HYPOTHESIS_PROFILE names another.
* The longest tests run first, then the other slow ones (pytest_collection_modifyitems).
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


# The longest tests, longest first (seconds each under `pytest -n 2` on 2 cores, 2026-12-07). They
# start first, then the other slow tests, then the rest. With --dist worksteal (pyproject.toml) a
# worker that runs out of tests takes the end of another's queue: the short tests, so that the two
# finish together instead of one starting a long test at the end. Only the order depends on this
# list.
LONGEST_FIRST = ("test_quick_demo_and_frontier",  # 200-255
                 "test_a4_needs_a1_to_a3_only",  # 100-130
                 "test_ungraded_tests_pass_or_wait_in_the_student_copy",  # 86-90
                 "test_study_quick",  # 64-76
                 "test_wrong_but_plausible_solutions_of_a5_lose_points",  # 54-69
                 "test_gpu_suite_runs_in_its_quick_form",  # 52-72
                 "test_dpo_killed_ten_times_ends_as_the_uninterrupted_run",  # 35-41
                 "test_rloo_killed_ten_times_ends_as_the_uninterrupted_run",  # 31-34
                 "test_ppo_on_the_ground_truth_raises_the_reward")  # 26-28


def pytest_collection_modifyitems(items):
    """LONGEST_FIRST, then the other slow tests, then the rest (a stable sort: every xdist worker
    collects the same order)."""
    def rank(item):
        name = item.originalname
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name)
        return len(LONGEST_FIRST) + (item.get_closest_marker("slow") is None)

    items.sort(key=rank)
