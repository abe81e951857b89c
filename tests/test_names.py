"""Our top-level names never shadow a library's: the project runs from the checkout, so the
checkout's directory comes first on sys.path, and a module of ours named like an installed package
(as `kernels` was, once transformers began importing Hugging Face's `kernels`) breaks every process
that uses both."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from hang_guard import HANG_GUARD_SECONDS

REPO = Path(__file__).resolve().parents[1]
# Directories whose files become top-level modules: the checkout (`python train.py`, pytest's
# pythonpath), the tests and graders (pytest puts a test file's directory on sys.path) and bench/
# (`python bench/x.py`).
SCRIPT_DIRS = ("tests", "bench", "course/graders")


def our_top_level_names():
    """Every name the project's code can be imported under: the checkout's modules and packages, and
    the modules of the directories that pytest or `python bench/...` put on sys.path."""
    names = {path.stem for path in REPO.glob("*.py")}
    names |= {path.parent.name for path in REPO.glob("*/__init__.py")}
    for directory in SCRIPT_DIRS:
        names |= {path.stem for path in (REPO / directory).glob("*.py")}
    return names


def our_packages():
    """The checkout's importable modules and packages, as a user (or a notebook at the root) imports
    them."""
    # train.py is the script: never imported
    packages = sorted({path.stem for path in REPO.glob("*.py")} - {"train"}
                      | {path.parent.name for path in REPO.glob("*/__init__.py")})
    return packages


def test_no_top_level_name_of_ours_belongs_to_an_installed_distribution():
    installed = importlib.metadata.packages_distributions()
    ours = our_top_level_names()
    expected = {"dpo", "model", "logprob_kernels", "loop", "methods", "plumbing", "conftest",
                "bench_logprobs"}
    assert expected <= ours, ours
    clashes = {name: installed[name] for name in ours if name in installed
               # our own editable install lists what it lists
               and set(installed[name]) != {"dpo-reference"}}
    assert not clashes, (
        f"top-level names of ours that installed distributions also provide: {clashes}")


# Hugging Face's kernel hub (transformers >= 5.25 imports it); dask's
LIBRARY_NAMES = ("kernels", "distributed")


def _import_in_order(first, then):
    """Import the modules `first`, then `then`, in a fresh interpreter at the repository root.
    Returns the class name transformers gives GPT-2 and where each of LIBRARY_NAMES would be
    imported from (None: not installed)."""
    code = "; ".join([f"import {name}" for name in first + then] + [
        "import importlib.util, transformers", "print(transformers.GPT2LMHeadModel.__name__)",
        "print(*[getattr(importlib.util.find_spec(n), 'origin', None) for n in "
                                                                    f"{LIBRARY_NAMES!r}])"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True,
                          timeout=HANG_GUARD_SECONDS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_class, origins = proc.stdout.splitlines()
    return model_class, dict(zip(LIBRARY_NAMES, origins.split()))


def from_the_checkout(origin):
    """True when a module's origin is a file of this checkout (not of a library, even one in a .venv
    inside it)."""
    return (origin != "None" and Path(origin).resolve().is_relative_to(REPO)
            and "site-packages" not in origin)


def test_transformers_then_our_modules_from_the_repository_root():
    model_class, origins = _import_in_order(["transformers"], our_packages())
    assert model_class == "GPT2LMHeadModel"
    assert not any(from_the_checkout(origin) for origin in origins.values()), origins


def test_our_modules_then_transformers_from_the_repository_root():
    model_class, origins = _import_in_order(our_packages(), ["transformers"])
    assert model_class == "GPT2LMHeadModel"
    assert not any(from_the_checkout(origin) for origin in origins.values()), origins
