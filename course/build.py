"""Build the student copy of the repository: every assignment's solutions replaced by stubs.

For each (file, qualified name) of the manifest, the function's body is replaced, in place in the
copied file, by its docstring, the comment lines of the original body (hints), the shape comments of
its assignments as comments naming their targets ("# logits: (2B, T, V)"), and

    raise NotImplementedError("Assignment N: <what to write>")

Signatures, decorators (so a `@triton.jit` kernel stays a kernel) and everything outside the stubbed
bodies are kept byte for byte. The files in manifest.REMOVED are not copied; the handouts go to
handouts/ and the answer sheets to answers/ (A4.md, A5.md); tests/conftest.py registers
`course.plugin`, which turns an ungraded test that reaches a stub into a skip naming the assignment
it waits for.

`solution_lines()` lists the distinctive lines of every stubbed body (code lines of at least 25
characters), so a check can assert that none of them is left in the copy.
"""

import ast
import os
import re
import shutil
import subprocess

from course.manifest import ANSWERS, ASSIGNMENTS, REMOVED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIPPED_DIRS = {".git", ".venv", "out", "__pycache__", ".pytest_cache", ".hypothesis", "build"}


def find_function(tree, qualname):
    """The ast node of `qualname` ("f" or "Class.method") in a module's tree."""
    nodes = tree.body
    *outer, name = qualname.split(".")
    for part in outer:
        nodes = next(n for n in nodes if isinstance(n, ast.ClassDef) and n.name == part).body
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    raise KeyError(f"no function {qualname}")


def body_span(node):
    """(first line, last line) of a function's body after its docstring, 1-based, inclusive."""
    body = node.body
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
            and isinstance(first.value.value, str):
        if len(body) == 1:
            return body[0].end_lineno + 1, body[0].end_lineno
        body = body[1:]
    return body[0].lineno, node.end_lineno


SHAPE_COMMENT = re.compile(r"^(\s*)([A-Za-z_][\w, ]*?)\s*=[^=].*#\s*(\(.*\).*)$")


def kept_comment(line):
    """What a stubbed body keeps of one line: a comment line as it is, and the shape comment of an
    assignment
    as a comment naming its target ("    logits = model(x)  # (B, T, V)" -> "    # logits: (B, T,
    V)")."""
    if line.strip().startswith("#"):
        return line
    match = SHAPE_COMMENT.match(line)
    return (f"{match.group(1)}# {match.group(2).strip()}: {match.group(3).strip()}\n" if match
            else None)


def stub_source(source, stubs):
    """`source` with the bodies of `stubs` [(qualname, message)] replaced; returns (new source,
    removed lines)."""
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    spans = []
    for qualname, message in stubs:
        node = find_function(tree, qualname)
        first, last = body_span(node)
        indent = " " * node.body[0].col_offset
        kept = [indent + c.lstrip() for c in map(kept_comment, lines[first - 1:last]) if c]
        spans.append((first, last, kept + [f"{indent}raise NotImplementedError({message!r})\n"]))
    removed = []
    for first, last, replacement in sorted(spans, reverse=True):
        removed += lines[first - 1:last]
        lines[first - 1:last] = replacement
    return "".join(lines), removed


def stubs_by_file(solved=()):
    """{file: [(qualname, "Assignment N: what to write")]} over every assignment but those named in
    `solved`."""
    out = {}
    for name, a in ASSIGNMENTS.items():
        if name in solved:
            continue
        for path, qualname, what in a.stubs:
            out.setdefault(path, []).append((qualname, f"Assignment {a.number}: {what}"))
    return out


def solution_lines(repo=REPO):
    """The distinctive code lines of the stubbed bodies: stripped, >= 25 characters, not comments,
    and found nowhere else in the repository's Python files (a line such as `return grad, None,
    None, None` that other code also has gives nothing away)."""
    found, stubbed = set(), {}
    for path, stubs in stubs_by_file().items():
        with open(os.path.join(repo, path)) as f:
            stubbed[path], removed = stub_source(f.read(), stubs)
        found |= {line.strip() for line in removed if len(line.strip()) >= 25
                  and not line.strip().startswith("#")}
    for path in repository_files(repo):
        if path.endswith(".py") and path not in REMOVED and not path.startswith("course/"):
            text = stubbed.get(path) or open(os.path.join(repo, path), errors="replace").read()
            found = {line for line in found if line not in text}
    return found


def repository_files(repo=REPO):
    """The files to copy: what git tracks (and untracked files it does not ignore), or a walk
    without caches."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                                cwd=repo,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        return [p for p in listed if os.path.isfile(os.path.join(repo, p))]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(repo):
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
            files += [os.path.relpath(os.path.join(dirpath, f), repo) for f in filenames]
        return files


def build(out_dir, repo=REPO, log=print, solved=()):
    """Write the student copy of `repo` into `out_dir` (which must not exist, or be empty).

    `solved`: assignments ("A1", ...) whose solutions stay in the copy, as if a student had done
    them (the kit's self-test grades each assignment with only its own solution in place)."""
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not empty; give a new directory")
    stubs = stubs_by_file(solved)
    n_files = 0
    for path in repository_files(repo):
        if path in REMOVED:
            continue
        target = os.path.join(out_dir, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if path in stubs:
            with open(os.path.join(repo, path)) as f:
                source, _ = stub_source(f.read(), stubs[path])
            with open(target, "w") as f:
                f.write(source)
        else:
            shutil.copy2(os.path.join(repo, path), target)
        n_files += 1
    os.makedirs(os.path.join(out_dir, "handouts"), exist_ok=True)
    for a in ASSIGNMENTS.values():
        shutil.copy2(os.path.join(repo, a.handout),
                     os.path.join(out_dir, "handouts", os.path.basename(a.handout)))
    os.makedirs(os.path.join(out_dir, "answers"), exist_ok=True)
    for name, sheet in ANSWERS.items():
        shutil.copy2(os.path.join(repo, sheet), os.path.join(out_dir, "answers", f"{name}.md"))
    with open(os.path.join(out_dir, "tests", "conftest.py"), "a") as f:
        f.write("\n# The course kit: ungraded tests that reach an assignment's stub skip, naming "
                "the assignment.\npytest_plugins = [\"course.plugin\"]\n")
    n_stubs = sum(len(s) for s in stubs.values())
    log(f"wrote {out_dir}: {n_files} files, {n_stubs} functions stubbed in {len(stubs)} files, "
        f"{len(REMOVED)} files left out, {len(ASSIGNMENTS)} handouts")
