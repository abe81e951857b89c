"""python -m course build OUT_DIR | grade ASSIGNMENT [--repo DIR] [--json FILE] [--runs DIR]: see
course/README.md."""

import argparse
import os
import sys

from course import build, grade
from course.manifest import ASSIGNMENTS


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m course", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("build",
                              help="write the student copy of this repository into OUT_DIR")
    sub.add_argument("out_dir")
    sub = commands.add_parser("grade",
                              help="run one assignment's graded tests and print the score table")
    sub.add_argument("assignment", help="one of " + ", ".join(ASSIGNMENTS))
    sub.add_argument("--repo", default=".",
                     help="the repository to grade (default: the current directory)")
    sub.add_argument("--json", default=None, metavar="FILE",
                     help="also write the results to FILE as JSON")
    sub.add_argument("--runs", default="", metavar="DIR",
                     help="A4 only: read the runs from DIR/demo and DIR/frontier instead of the "
                     "repository's out/ (and run nothing in their place)")
    args = parser.parse_args(argv)
    if args.command == "build":
        try:
            build.build(args.out_dir)
        except FileExistsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    sys.path.insert(0, os.path.abspath(args.repo))  # grade the code of --repo
    return grade.main(args.assignment, os.path.abspath(args.repo), args.json, args.runs)


if __name__ == "__main__":
    sys.exit(main())
