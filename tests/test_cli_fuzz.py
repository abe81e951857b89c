"""A fuzz test of the command line (issue 27): whatever a user types, `train.py` ends in exit 0, 1
or 2 within a bounded time, never with a traceback, and a run that fails to start writes nothing.

What is fuzzed. Hypothesis draws a command (every subcommand of `train.build_parser()`, and none:
the demo), then 0-4 of that command's flags, found by introspecting the parser (option strings,
`type`, `choices`, BooleanOptionalAction, store_true), so a flag added to plumbing/config.py is
fuzzed without a change here. Values come from a pool per type: numbers valid and small, 0,
negatives, NaN, inf, huge (1e9, 10**12, 2**64), and non-numbers; strings "", short random text and
paths to the fixture files: good ones (a tiny GPT checkpoint, a tiny reward model, preference pairs,
KTO examples, a text corpus, a .tiktoken file) and bad ones (missing, empty, truncated .pt, a
foreign .pt, random bytes, a run's config.json, a directory of unrelated files, a finished run);
choices are a valid one or a bad one; each flag as `--flag value` or `--flag=value`. --out-dir is a
fresh directory, or sometimes the finished run, the unrelated directory, a file or "". Work-size
flags (--steps, --batch-size, the fresh model's size, ...) and the required inputs (--init, --data,
...) get small, good defaults unless the draw gives them, so that many drawn command lines pass
every check.

What the patches bound. Real work is never done: where it would begin the run stops with `_Started`,
which counts as a good start. `start_run` (loop.py and methods/rlhf.py import it by name) runs for
real, so config.json and --resume are exercised, and then raises; `GPT.complete` raises at once, so
pairs, eval and sample run sentiment's sample_completions / build_preference_pairs / sample_report
up to the sampling itself (their seeding included); the experiments' `run` / `run_seeds` (demo,
frontier, study: only their argument parsing is fuzzed) raise at once. A fresh GPT or LoRA adapters
larger than MAX_PARAMS raise `_TooBig` instead of allocating (a failure: a size nobody can train was
accepted), and an example still running at HANG_SECONDS is interrupted (SIGALRM). No network:
TIKTOKEN_CACHE_DIR is an empty directory (the gpt2 BPE is never downloaded), the Hugging Face hub is
offline, and its caches are temporary directories (the datasets cache is emptied after each example,
so each example sees what a new process would).

Each example: snapshot the whole temporary tree (paths and bytes), call `train.main(argv)`
in-process with stdout and stderr captured (log records and warnings are shown on stderr, as a plain
`python train.py` would), and check: the outcome is return 0/1, SystemExit 0/2 or _Started; no
exception escapes; stderr holds no "Traceback"; an exit 1 or 2 prints exactly one line, starting
with "error: ", and leaves the tree as it was; a run that starts without --resume does not overwrite
another run's files; no example takes over SLOW_SECONDS. CI runs CI_EXAMPLES examples (about 30 s on
2 CPU cores, shrinking included); other profiles (HYPOTHESIS_PROFILE=dev) their own max_examples.
"""

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import time
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import loop
import train
from experiments import demo, frontier, study
from methods import rlhf
from methods.reward_model import RewardModel
from model import GPT, GPTConfig
from plumbing import commands, lora, run_dir
from plumbing.checkpoint import save_checkpoint

CI_EXAMPLES = 150
MAX_EXAMPLES = (CI_EXAMPLES if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci"
                else settings().max_examples)
SLOW_SECONDS = 60  # an example slower than this is a failure
HANG_SECONDS = 120  # and one still running then is interrupted
MAX_PARAMS = 20_000_000  # a fresh GPT or LoRA adapters larger than this are not allocated (_TooBig)
REPO = Path(__file__).resolve().parents[1]


# BaseException, as _Hang below: no `except Exception` in the code under test can swallow them.
class _Started(BaseException):
    """The command passed every check and reached the point where real work begins."""


class _TooBig(BaseException):
    """The command was about to allocate a model larger than MAX_PARAMS."""


class _Hang(BaseException):
    """The example ran past HANG_SECONDS."""


# The failures, one class each, so that Hypothesis reports (and shrinks) each kind apart.
class Crash(AssertionError):
    """An exception escaped train.main: the user sees a traceback."""


class TracebackPrinted(AssertionError):
    """stderr shows a traceback."""


class UnexpectedStatus(AssertionError):
    """An exit status other than 0, 1 (a user error) or 2 (a bad flag)."""


class NotOneLine(AssertionError):
    """An exit 1 or 2 whose stderr is not exactly one line `error: ...`."""


class WroteOnFailedStart(AssertionError):
    """A command that failed to start (exit 1 or 2) changed files."""


class OverwroteAnotherRun(AssertionError):
    """A run that started (without --resume) overwrote the files of another run in its --out-dir."""


class TooBigToStart(AssertionError):
    """A model size nobody can allocate was accepted: the start would allocate for ever (or run out
    of memory)."""


class Slow(AssertionError):
    """An example took more than SLOW_SECONDS (or was interrupted at HANG_SECONDS)."""


# -----------------------------------------------------------------------------
# The temporary tree: fixtures (good and bad files, a finished run) and the outputs, all under ROOT
# (the cwd)

FIXTURES = "fixtures"
INIT = "fixtures/init/ckpt.pt"
INIT_DIR = "fixtures/init"
REWARD = "fixtures/reward/ckpt.pt"
PREFS = "fixtures/prefs.jsonl"
KTO = "fixtures/kto.jsonl"
TEXT = "fixtures/corpus.txt"
TIKTOKEN = "fixtures/reviews.tiktoken"
# a finished `train.py dpo --steps 1` run: ckpt.pt, config.json, metrics.jsonl, hf/
RUN = "fixtures/run"
LORA_RUN = "fixtures/lora-run"  # the same with --lora-rank 2: ckpt.pt holds the adapters
UNRELATED = "fixtures/unrelated"  # a directory of files that are neither data nor a model
# a local dataset directory: train.jsonl and test.jsonl (preference pairs)
DATASET = "fixtures/dataset"
FRESH = "outs/new"  # a directory that does not exist yet (outs/ is emptied after each example)

GOOD_PATHS = [INIT, INIT_DIR, REWARD, PREFS, KTO, TEXT, TIKTOKEN, RUN, LORA_RUN, DATASET,
              DATASET + ":test", "fixtures/run/hf"]
BAD_PATHS = [
    "fixtures/missing.jsonl", "fixtures/missing.pt", "fixtures/missing/dir", "fixtures/empty.jsonl",
    "fixtures/empty.txt", "fixtures/empty.pt", "fixtures/truncated.pt", "fixtures/foreign.pt",
    "fixtures/random.bin", "fixtures/random.jsonl", "fixtures/bad.tiktoken",
    "fixtures/run/config.json", UNRELATED, DATASET + ":nope", PREFS + ":test", RUN + ":train",
    "fixtures/missing:test",
]
OUT_DIRS = [FRESH, FRESH + "/a/b", RUN, LORA_RUN, UNRELATED, PREFS, ""]


# 128: the task's longest prompt (64 bytes) + a few new tokens
def tiny_gpt(block_size=128, vocab_size=257):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=1, n_head=2,
                         n_embd=16))


def write_fixtures(root):
    """The fixture files under root/fixtures (paths above) and the finished run; cwd is root."""
    fixtures = root / FIXTURES
    save_checkpoint(str(root / INIT), tiny_gpt(), None, 0, {})
    save_checkpoint(str(root / REWARD), RewardModel(tiny_gpt()), None, 0, {})
    pairs = [{"prompt": "Q: ", "chosen": f"yes {i}", "rejected": "no"} for i in range(8)]
    (root / PREFS).write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    (root / KTO).write_text("".join(json.dumps({"prompt": f"Q{i}: ", "completion": f"answer {i}",
                                                "label": i % 2 == 0})
                                    + "\n" for i in range(8)))
    (root / TEXT).write_text("a small corpus of words for windows, with some ünïcode.\n" * 60,
                             encoding="utf-8")
    shutil.copy(REPO / "sentiment" / "reviews_bpe.tiktoken", root / TIKTOKEN)
    for name in ("empty.jsonl", "empty.txt", "empty.pt"):
        (fixtures / name).write_bytes(b"")
    (fixtures / "truncated.pt").write_bytes((root / INIT).read_bytes()[:300])
    torch.save([1, 2, 3], fixtures / "foreign.pt")
    noise = random.Random(0).randbytes(2000)
    for name in ("random.bin", "random.jsonl", "bad.tiktoken"):
        (fixtures / name).write_bytes(noise)
    (root / DATASET).mkdir()
    for split in ("train", "test"):
        (root / DATASET / f"{split}.jsonl").write_text((root / PREFS).read_text())
    (root / UNRELATED).mkdir()
    (root / UNRELATED / "notes.md").write_text("# notes\nnothing to train on\n")
    (root / UNRELATED / "picture.png").write_bytes(noise[:500])
    for out_dir, lora_flags in ((RUN, []), (LORA_RUN, ["--lora-rank", "2"])):
        status = train.main(["dpo", "--init", INIT, "--data", PREFS, "--steps", "1", "--batch-size",
                             "2", "--eval-every", "1", "--out-dir", out_dir] + lora_flags)
        assert status == 0 and (root / out_dir / "ckpt.pt").is_file()


def snapshot(root):
    """{relative path: sha256 of its bytes, or "dir"} of everything under root."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found


def differences(before, after):
    """Lines naming what was added, removed or changed between two snapshots."""
    return ([f"added {p}" for p in sorted(after.keys() - before.keys())] +
            [f"removed {p}" for p in sorted(before.keys() - after.keys())] +
            [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]])


# -----------------------------------------------------------------------------
# The patches: stop where real work begins, refuse sizes that cannot be allocated

def stop_after(real):
    def stopped(*args, **kwargs):
        real(*args, **kwargs)
        raise _Started(real.__name__)
    return stopped


def stop_at(name):
    def stopped(*args, **kwargs):
        raise _Started(name)
    return stopped


def guarded_gpt(config):
    """GPT(config), unless it would hold more than MAX_PARAMS parameters."""
    n = (config.n_layer * 12 * config.n_embd ** 2 + (config.vocab_size + config.block_size)
         * config.n_embd
         if all(isinstance(v, int) for v in (config.n_layer, config.n_embd, config.vocab_size,
                                             config.block_size))
         else 0)
    if n > MAX_PARAMS:
        raise _TooBig(f"a fresh GPT of about {n:.3g} parameters (n_layer {config.n_layer}, n_embd "
                      f"{config.n_embd}, block_size {config.block_size})")
    return GPT(config)


class GuardedLoRALinear(lora.LoRALinear):
    """LoRALinear, unless its adapters would hold more than MAX_PARAMS parameters."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        if isinstance(rank, int) and rank * (base.in_features + base.out_features) > MAX_PARAMS:
            raise _TooBig(f"LoRA adapters of rank {rank}: "
                          f"{rank * (base.in_features + base.out_features):.3g} "
                          f"parameters on one layer")
        super().__init__(base, rank, alpha, dropout)


class World:
    """The temporary tree (root: the cwd of every example) and what restores it between examples."""

    def __init__(self, root, pristine, datasets_cache):
        self.root = root
        self.pristine = pristine  # a copy of root/fixtures as written
        self.pristine_snapshot = snapshot(pristine)
        # HF_DATASETS_CACHE: emptied after each example (a new process's view)
        self.datasets_cache = datasets_cache

    def __repr__(self):  # Hypothesis prints the fixture with a falsifying example: keep it short
        return f"World(cwd={str(self.root)!r})"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli-fuzz")
    root, cache = base / "tree", base / "cache"
    (root / FIXTURES).mkdir(parents=True)
    (cache / "tiktoken").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        # empty: the gpt2 BPE is never downloaded
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache / "tiktoken"))
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.setenv(name, "1")
        mp.setenv("HF_HOME", str(cache / "hf"))  # no model or dataset cached from elsewhere
        mp.setenv("HF_DATASETS_CACHE", str(cache / "hf" / "datasets"))
        for name in ("DPO_DEBUG", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            mp.delenv(name, raising=False)
        write_fixtures(root)
        shutil.copytree(root / FIXTURES, base / "pristine")
        mp.setattr(loop, "start_run", stop_after(run_dir.start_run))
        mp.setattr(rlhf, "start_run", stop_after(run_dir.start_run))
        # pairs, eval, sample: the sampling itself
        mp.setattr(GPT, "complete", stop_at("GPT.complete"))
        for module, name in ((demo, "run"), (frontier, "run"), (study, "run"),
                             (study, "run_seeds")):
            mp.setattr(module, name, stop_at(f"{module.__name__}.{name}"))
        mp.setattr(commands, "GPT", guarded_gpt)
        mp.setattr(lora, "LoRALinear", GuardedLoRALinear)
        yield World(root, base / "pristine", cache / "hf" / "datasets")


# -----------------------------------------------------------------------------
# The command lines

def command_flags():
    """{command: its flags (argparse actions)}, from train.build_parser(); None: no command (the
    demo)."""
    parser = train.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def fuzzed(actions):  # not --debug (it asks for the traceback) nor --help (it only prints)
        return [a for a in actions
                if a.option_strings and a.dest != "debug" and not isinstance(a,
                                                                             argparse._HelpAction)]

    found = {name: fuzzed(sub._actions) for name, sub in subparsers.choices.items()}
    found[None] = fuzzed(parser._actions)
    return found


COMMANDS = command_flags()
INTS = ["1", "2", "3", "4", "8", "64", "0", "-1", "-3", "1000000000", "1000000000000",
        "18446744073709551616", "nan", "1.5", "1e3", "", "x"]
FLOATS = ["0.5", "0.1", "1", "2", "1e-3", "0", "-0", "-1", "-0.5", "nan", "inf", "-inf", "1e9",
          "1e308", "1e400", "1000000000000", "", "x"]
BAD_CHOICES = ["", "bogus", "NONE", "-1"]
STRINGS = st.one_of(st.sampled_from(GOOD_PATHS + BAD_PATHS),
                    st.sampled_from(["", "gpt2", "bytes", "cpu", "cuda",
                                     "c_attn", "c_fc,nope", "1,2", "-1", "nan", "a/b", "~"]),
                    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                            max_size=8))
WORK_SIZE = {"--steps": "1", "--batch-size": "2", "--eval-every": "1", "--max-new-tokens": "4",
             "--num-prompts": "1", "--samples-per-prompt": "2", "--n-layer": "1", "--n-head": "2",
             "--n-embd": "16", "--block-size": "64", "--eval-samples": "1"}


def required_inputs(command):
    """Good values of the inputs `command` needs (its checks fail at once without them)."""
    needed = {}
    if command in ("dpo", "unlikelihood", "simpo", "orpo", "kto", "reward-model", "ppo", "rloo",
                   "pairs", "eval", "sample"):
        needed["--init"] = INIT
    if command in ("sft", "dpo", "unlikelihood", "simpo", "orpo", "reward-model"):
        needed["--data"] = PREFS
    needed.update({"kto": {"--data": KTO}, "pretrain": {"--data": TEXT},
                   "eval": {"--reference-init": INIT}, "ppo": {"--ground-truth-reward": None},
                   "rloo": {"--reward-model": REWARD}}.get(command, {}))
    return needed


@st.composite
def flag_args(draw, action):
    """One flag of `action` with a drawn value: ["--flag", "value"], ["--flag=value"] or
    ["--flag"]."""
    if action.nargs == 0:  # store_true, BooleanOptionalAction (--x / --no-x)
        return [draw(st.sampled_from(action.option_strings))]
    if action.choices:
        value = draw(st.one_of(st.sampled_from(sorted(action.choices)),
                               st.sampled_from(BAD_CHOICES)))
    elif action.type is int:
        value = draw(st.sampled_from(INTS))
    elif action.type is float:
        value = draw(st.sampled_from(FLOATS))
    else:
        value = draw(STRINGS)
    flag = action.option_strings[-1]
    return [f"{flag}={value}"] if draw(st.booleans()) else [flag, value]


@st.composite
def command_lines(draw):
    """argv for train.main: a command, its small defaults, 0-4 drawn flags, an --out-dir (half the
    time a fresh one; into a finished run, half of those with --resume)."""
    command = draw(st.sampled_from([name for name in COMMANDS if name is not None] + [None]))
    actions = {a.option_strings[0]: a for a in COMMANDS[command] if a.dest != "out_dir"}
    takes_out_dir = any(a.dest == "out_dir" for a in COMMANDS[command])
    drawn = (draw(st.lists(st.sampled_from(sorted(actions)), max_size=4, unique=True)) if actions
             else [])
    defaults = {flag: value for flag, value in WORK_SIZE.items() if flag in actions}
    if draw(st.integers(0, 9)) < 9:
        # mostly (and when shrunk): the inputs the command needs, so that deeper checks are reached;
        # pretrain without --data reads the embedded reviews (a second or two)
        defaults.update({flag: value for flag, value in required_inputs(command).items()
                         if flag in actions})
    out_dir = draw(st.one_of(st.just(FRESH), st.sampled_from(OUT_DIRS))) if takes_out_dir else None
    if out_dir in (RUN, LORA_RUN) and "--resume" in actions and draw(st.booleans()):
        defaults["--resume"] = None
    argv = [] if command is None else [command]
    for flag, value in defaults.items():
        if flag not in drawn and actions[flag].dest not in {actions[d].dest for d in drawn}:
            argv += [flag] if value is None else [flag, value]
    for flag in drawn:
        argv += draw(flag_args(actions[flag]))
    return argv if out_dir is None else argv + ["--out-dir", out_dir]


# -----------------------------------------------------------------------------
# One example

@dataclasses.dataclass
class Result:
    outcome: str  # "return N", "exit N", "started", "too big", "hang", "crash"
    stderr: str
    seconds: float
    changes: list  # what the example changed under root
    error: BaseException | None = None  # what escaped train.main


def _alarm(signum, frame):
    raise _Hang(f"still running after {HANG_SECONDS} s")


def call_main(argv):
    """train.main(argv), with stdout and stderr captured and log records and warnings shown on
    stderr as a plain `python train.py` shows them; returns (outcome, stderr, escaped exception or
    None)."""
    err, root_logger = io.StringIO(), logging.getLogger()
    # logging's last resort: WARNING and up on stderr
    handlers, root_logger.handlers = root_logger.handlers, []
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    error = None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")  # Python's defaults outside __main__
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                             ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            try:
                outcome = f"return {train.main(argv)}"
            except SystemExit as e:
                outcome = f"exit {0 if e.code is None else e.code}"
            except _Started:
                outcome = "started"
            except _TooBig as e:
                outcome, error = "too big", e
            except _Hang as e:
                outcome, error = "hang", e
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # anything else escaping is the traceback a user would see
                outcome, error = "crash", e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        root_logger.handlers = handlers
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line)
                    for w in caught)
    return outcome, err.getvalue() + shown, error


def restore(world):
    """Back to the fixtures alone, as written: outputs removed, a fixture a started run changed put
    back, and no dataset cached by `datasets` (its first load prints progress bars, a cached one
    does not)."""
    shutil.rmtree(world.datasets_cache, ignore_errors=True)
    for entry in world.root.iterdir():
        if entry.name != FIXTURES:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if snapshot(world.root / FIXTURES) != world.pristine_snapshot:
        shutil.rmtree(world.root / FIXTURES)
        shutil.copytree(world.pristine, world.root / FIXTURES)


def run_example(world, argv):
    """Run one command line from the clean tree; returns (Result, [failure exception, ...]) and
    restores the tree."""
    before = snapshot(world.root)
    start = time.perf_counter()
    try:
        outcome, stderr, error = call_main(argv)
        seconds = time.perf_counter() - start
        result = Result(outcome, stderr, seconds, differences(before, snapshot(world.root)), error)
        return result, failures(argv, result, before)
    finally:
        restore(world)


def last_frames(error, n=4):
    frames = traceback.extract_tb(error.__traceback__)[-n:]
    return "".join(traceback.format_list(frames)) + f"{type(error).__name__}: {error}"


def failures(argv, result, before):
    """The failures of one example, most serious first (each an AssertionError subclass, the
    exception that escaped as its __cause__)."""
    found, lines = [], shown_lines(result.stderr)
    described = (f"train.py {' '.join(map(repr, argv))}\n  -> {result.outcome} in "
                 f"{result.seconds:.1f} s; stderr:\n"
                 + "".join(f"    {line}\n" for line in lines[-12:]))

    def fail(kind, message, cause=None):
        failure = kind(f"{message}\n{described}")
        # Hypothesis tells failures apart by their context too
        failure.__cause__ = failure.__context__ = cause
        found.append(failure)

    if result.outcome == "crash":
        wrote = "".join(f"\n  {change}" for change in result.changes[:20])
        fail(Crash,
             f"a traceback:\n{last_frames(result.error)}"
             + (f"\nand it changed files:{wrote}" if wrote else ""),
             result.error)
    if result.outcome == "too big":
        fail(TooBigToStart, f"would allocate {result.error}", result.error)
    if result.outcome == "hang" or result.seconds > SLOW_SECONDS:
        fail(Slow, f"took {result.seconds:.1f} s ({result.outcome})", result.error)
    if "Traceback" in result.stderr:
        fail(TracebackPrinted, "stderr shows a traceback")
    failed = result.outcome in ("return 1", "exit 2")
    exited = result.outcome.startswith(("return", "exit"))
    if exited and result.outcome not in ("return 0", "exit 0") and not failed:
        fail(UnexpectedStatus, f"status {result.outcome}")
    if failed and (len(lines) != 1 or not lines[0].startswith("error: ")):
        fail(NotOneLine, f"{len(lines)} lines on stderr, expected one `error: ...`")
    if failed and result.changes:
        fail(WroteOnFailedStart,
             "a failed start changed files:\n  " + "\n  ".join(result.changes[:20]))
    if result.outcome == "started" and not any(asked_to(argv, "resume", "overwrite")):
        owned = [p for p in before if before[p] != "dir" and os.path.basename(p) in (
                 "ckpt.pt", "config.json", "metrics.jsonl", "best.pt")]
        lost = [c for c in result.changes if c.split(" ", 1)[1] in owned]
        if lost:
            fail(OverwroteAnotherRun,
                 "a new run overwrote another run's files:\n  " + "\n  ".join(lost))
    return found


def shown_lines(text):
    """The lines a terminal shows of `text`: each line's text after its last carriage return (a
    progress bar that cleared itself shows nothing), blank ones left out."""
    return [shown for line in text.split("\n") if (shown := line.rsplit("\r", 1)[-1]).strip()]


def asked_to(argv, *names):
    """Whether argv (which parsed) asks for each of the flags `names` (e.g. resume: --resume): a
    list of bools."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        args = train.build_parser().parse_args(argv)
    return [bool(getattr(args, name, False)) for name in names]


# -----------------------------------------------------------------------------
# The test

def test_fixtures_are_what_they_claim(world):
    """The good fixtures start every kind of command (so the fuzz reaches past the first check)."""
    started = {}
    for argv in (["dpo", "--init", INIT, "--data", PREFS], ["kto", "--init", INIT, "--data", KTO],
                 ["pretrain", "--data", TEXT], ["ppo", "--init", INIT, "--reward-model", REWARD],
                 ["pairs", "--init", INIT], ["eval", "--init", INIT, "--reference-init", INIT],
                 ["sample", "--init", INIT], ["dpo", "--init", INIT, "--data", PREFS, "--resume"],
                 ["study"]):
        defaults = [x for flag, value in WORK_SIZE.items()
                    if flag in {a.option_strings[0] for a in COMMANDS[argv[0]]}
                    for x in (flag, value)]
        out = (["--out-dir", RUN if "--resume" in argv else FRESH]
               if any(a.dest == "out_dir" for a in COMMANDS[argv[0]]) else [])
        result, found = run_example(world, argv + defaults + out)
        started[" ".join(argv)] = (result.outcome, result.stderr[-300:])
    assert all(outcome == "started" for outcome, _ in started.values()), started


@settings(max_examples=MAX_EXAMPLES)
@given(argv=command_lines())
def test_every_command_line_ends_cleanly(world, argv):
    result, found = run_example(world, argv)
    # --hypothesis-show-statistics: how many examples exited, failed or started
    event(result.outcome)
    if found:
        raise found[0]
