"""A GPU neighbour for shared-card tests: holds most of the card and churns more, until stopped or time runs out.

    python -m benchmarks.gpu_neighbour --hold-gib 50 --churn-gib 4 --seconds 600 --ready-file /tmp/neighbour.ready
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hold-gib", type=float, default=50)
    p.add_argument("--churn-gib", type=float, default=4)
    p.add_argument("--period-s", type=float, default=0.5)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--ready-file", default=None)
    a = p.parse_args()
    gib = 1 << 30
    held = torch.empty(int(a.hold_gib * gib), dtype=torch.uint8, device="cuda")
    held.random_()
    if a.ready_file:
        Path(a.ready_file).write_text(str(torch.cuda.mem_get_info()))
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        churn = torch.empty(int(a.churn_gib * gib), dtype=torch.uint8, device="cuda")
        churn.fill_(1)
        torch.cuda.synchronize()
        time.sleep(a.period_s)
        del churn
        torch.cuda.empty_cache()  # give it back to the driver, as a neighbour that really churns does
        time.sleep(a.period_s)
    del held


if __name__ == "__main__":
    main()
