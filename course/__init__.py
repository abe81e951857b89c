"""The course kit: graded assignments built from this repository (instructor notes:
course/README.md).

    python -m course build OUT_DIR      the student copy: solutions replaced by NotImplementedError
    stubs
    python -m course grade A1 [--repo DIR]   run one assignment's graded tests and print the score
    table

    manifest.py   which functions, files and graded tests make up each assignment (the one source)
    build.py      copies the repository and stubs the solutions (ast-located, signatures and
                  docstrings kept)
    grade.py      runs the graders (course/graders/test_*.py) and scores them
    plugin.py     the pytest plugin of the student copy: ungraded tests that reach a stub skip,
                  naming the assignment they wait for
"""
