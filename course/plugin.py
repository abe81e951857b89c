"""The course's pytest plugin: the `points` marker, and skips for ungraded tests that wait for an
assignment.

In the student copy many ordinary tests (training end to end, the demo, the kernels' own tests)
reach a function that is still a stub. They are not graded; instead of erroring, they are reported
as skipped with the assignment they wait for: "waits for Assignment 2: the Triton forward kernel
...". Graded tests (those under course/graders/) fail as usual, which is what the score counts.
"""

import re

import pytest

STUB = re.compile(r"Assignment \d+: [^\n'\"\\]*")


def pytest_configure(config):
    config.addinivalue_line("markers",
                            "points(n): how many points a graded test is worth (default 1)")
    config.addinivalue_line("markers",
                            "extra_credit: an optional graded test, its points not in the total")


def waiting_for(excinfo):
    """The "Assignment N: ..." message of a stub anywhere in the exception: its chain (a stub raised
    inside a Triton kernel comes wrapped by the interpreter) and the members of an exception group
    (hypothesis reports several failing examples as one)."""
    return _stub_message(excinfo.value, set())


def _stub_message(error, seen):
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        match = STUB.search(str(error))
        if match:
            return match.group(0)
        for member in getattr(error, "exceptions", ()):  # BaseExceptionGroup
            found = _stub_message(member, seen)
            if found:
                return found
        error = error.__cause__ or error.__context__
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (call.excinfo is None or report.outcome != "failed"
        or "course/graders" in str(item.path).replace("\\", "/")):
        return
    stub = waiting_for(call.excinfo)
    if stub:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: waits for {stub}")
