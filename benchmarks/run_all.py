"""Run every benchmark and print one JSON line per figure (``make bench``).

Each ``benchmarks/bench_*.py`` exposes ``run() -> list[dict]`` with keys ``name``, ``value``,
``unit``, ``baseline``, ``ratio``. Results are also appended to ``.bench/results.jsonl`` with a
timestamp. Pass module names to run a subset: ``python benchmarks/run_all.py bench_chamfer``.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    modules = names or sorted(p.stem for p in HERE.glob("bench_*.py"))
    out = HERE.parent / ".bench" / "results.jsonl"
    out.parent.mkdir(exist_ok=True)
    failed = 0
    for name in modules:
        try:
            rows = importlib.import_module(name).run()
        except Exception:
            traceback.print_exc()
            rows = [{"name": name, "value": None, "unit": None, "baseline": None, "ratio": None, "error": True}]
            failed += 1
        for row in rows:
            print(json.dumps(row), flush=True)
            with out.open("a") as handle:
                handle.write(json.dumps({**row, "module": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
