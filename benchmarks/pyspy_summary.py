"""Summarises py-spy's folded stacks (``record -f raw``) as JSON: where a process's busy time goes.

    python benchmarks/pyspy_summary.py --seconds 5 --rate 200 engine.c128.txt [...]

py-spy leaves out samples of threads that wait (sleep, locks, I/O), so samples / (seconds x rate) is the share of
wall time a thread was busy. Per file and thread (busy 5 % or more): that share, and the functions with the most
samples, as the innermost frame ("self") and anywhere in the stack ("total"), in percent of wall time.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _function(frame: str) -> str:
    """'name (path/to/file.py:123)' -> 'file.py:name'; anything else as it is."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['file'].rsplit('/', 1)[-1]}:{m['func']}"


def summarise(path: str, seconds: float, rate: int, top: int = 25, min_busy_pct: float = 5.0) -> dict:
    expected = seconds * rate
    pct = lambda n: round(100 * n / expected, 1)  # noqa: E731
    own: dict[str, Counter] = defaultdict(Counter)
    total: dict[str, Counter] = defaultdict(Counter)
    busy: Counter = Counter()
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames, thread = int(count), stack.split(";"), "all"
        if frames[0].startswith("thread ("):  # recorded with --threads: "thread (tid): name"
            thread, frames = frames[0].split(": ", 1)[-1], frames[1:]
        funcs = [_function(f) for f in frames]
        busy[thread] += n
        if funcs:
            own[thread][funcs[-1]] += n
            for f in set(funcs):
                total[thread][f] += n
    return {
        "file": path,
        "threads": {
            t: {
                "busy_pct": pct(n),
                "self_pct": {f: pct(k) for f, k in own[t].most_common(top)},
                "total_pct": {f: pct(k) for f, k in total[t].most_common(top)},
            }
            for t, n in busy.most_common()
            if pct(n) >= min_busy_pct
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--seconds", type=float, required=True, help="how long py-spy recorded")
    p.add_argument("--rate", type=int, default=200)
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    print(json.dumps([summarise(f, a.seconds, a.rate, a.top) for f in a.files], indent=1))


if __name__ == "__main__":
    main()
