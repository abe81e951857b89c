"""Collect the outputs of bench/gpu_suite.sh into one JSON file and one markdown report.

    python bench/collect_results.py LOGS_DIR OUT_PREFIX      -> OUT_PREFIX.json and OUT_PREFIX.md

LOGS_DIR holds status.txt (one line per step: name, exit status, seconds), tests.xml (pytest's JUnit
report) and each benchmark's JSON (logprobs.json, linear_logprobs.json, dpo_step.json,
lora_memory.json); a step that failed or was skipped is reported as such, never filled in. The
markdown has the device and versions, the steps, the test counts and one table per benchmark with
every scalar column its JSON rows have.
"""

import json
import os
import sys
import xml.etree.ElementTree as ET

BENCHMARKS = (("logprobs", "Log-probs from logits (bench/bench_logprobs.py)"),
              ("linear_logprobs", "Log-probs without logits (bench/bench_linear_logprobs.py)"),
              ("dpo_step", "One DPO step, GPT-2 124M shapes (bench/bench_dpo_step.py)"),
              ("lora_memory", "DPO step memory, full vs LoRA (bench/bench_lora_memory.py)"))


def read_status(logs):
    """[{"step", "exit_status", "seconds"}] from status.txt (exit status 124: the step's time
    limit)."""
    rows = []
    with open(os.path.join(logs, "status.txt")) as f:
        for line in f:
            name, rc, seconds = line.split()
            rows.append({"step": name, "exit_status": int(rc), "seconds": int(seconds)})
    return rows


def read_tests(logs):
    """Counts from pytest's JUnit XML: tests, failures, errors, skipped (None when the file is
    missing)."""
    path = os.path.join(logs, "tests.xml")
    if not os.path.isfile(path):
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["failed"] = [f"{case.get('classname')}::{case.get('name')}"
                        for case in suite.iter("testcase")
                        if case.find("failure") is not None or case.find("error") is not None]
    return counts


def table_rows(result):
    """The list of row dicts of a benchmark's JSON, whatever its layout ("rows" at the top or one
    level down)."""
    if isinstance(result.get("rows"), list):
        return [("", result["rows"])]
    return ([(key, value["rows"]) for key, value in result.items() if isinstance(value, dict)
             and "rows" in value])


def markdown_table(rows):
    columns = []
    for row in rows:
        columns += [k for k, v in row.items() if k not in columns
                    and (v is None or isinstance(v, (int, float, str)))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for k in columns:
            v = row.get(k)
            cells.append("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    logs, prefix = (argv if argv is not None else sys.argv[1:])
    result = {"steps": read_status(logs), "tests": read_tests(logs), "benchmarks": {}}
    for name, _ in BENCHMARKS:
        path = os.path.join(logs, f"{name}.json")
        if os.path.isfile(path):
            with open(path) as f:
                result["benchmarks"][name] = json.load(f)
    environment = next((b["environment"] for b in result["benchmarks"].values()
                        if "environment" in b), {})
    result["environment"] = environment
    with open(prefix + ".json", "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# GPU suite: {environment.get('device', 'unknown device')}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in environment.items() if k != "device"),
             "", "| step | exit status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['exit_status']} | {s['seconds']} |" for s in result["steps"]]
    tests = result["tests"]
    if tests:
        failed = "; failed: " + ", ".join(tests["failed"]) if tests["failed"] else ""
        lines += ["",
                  f"Tests: {tests['tests']} run, {tests['failures']} failures, "
                  f"{tests['errors']} errors, "
                  f"{tests['skipped']} skipped{failed}"]
    for name, title in BENCHMARKS:
        if name not in result["benchmarks"]:
            lines += ["", f"## {title}", "", "no result (see the step's log)"]
            continue
        lines += ["", f"## {title}"]
        for part, rows in table_rows(result["benchmarks"][name]):
            lines += [""] + ([f"{part}:", ""] if part else []) + markdown_table(rows)
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {prefix}.json and {prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
