"""The one time limit the tests share, and why it is not a speed check."""

# A test's subprocess (a command, a benchmark, a grader) is stopped after this many seconds. It is
# a guard against a hang, not a speed check: the slowest such subprocess takes about 60 s on an idle
# 2-core machine and several times that beside other jobs, and no test's verdict depends on time.
HANG_GUARD_SECONDS = 3600
