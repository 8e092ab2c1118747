"""Time the pieces of one engine step: teacher forward, student forward+backward and teacher
forward+backward to the input on a batch of 256 FMNIST-sized images, and the CMI head over 4,096 bank
embeddings, at each requested number of torch threads (default 1). Prints milliseconds per call (mean of
10 after one warm-up call); ``--threads 1 2`` on an idle machine says whether a second core pays.

    python scripts/step_costs.py [--threads 1 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.inversion.cmi import projection_head
from shared.checkpoint import load_checkpoint
from shared.models import build_model


def ms_per_call(step: Callable[[], object], calls: int = 10) -> float:
    step()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/step_costs.py", description=__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts to time")
    args = parser.parse_args(argv)
    if min(args.threads) < 1:
        parser.error("--threads must be >= 1")
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"{threads} torch thread(s):")
        time_steps()
    return 0


def time_steps() -> None:
    teacher, _ = load_checkpoint("assets/teachers/fashion_mnist")
    teacher.eval()
    student = build_model("lenet5_half", 10, 1, (28, 28))
    images = torch.randn(256, 1, 28, 28)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)

    def student_step() -> None:
        optimizer.zero_grad()
        student(images).logsumexp(1).mean().backward()
        optimizer.step()

    pixels = images.clone().requires_grad_(True)
    dim = sum(m.num_features for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    head, bank = projection_head(dim, 128), torch.randn(4096, dim)
    with torch.no_grad():
        print(f"  teacher forward, 256 images: {ms_per_call(lambda: teacher(images)):.0f} ms")
        print(f"  CMI head over 4096 embeddings of dim {dim}: {ms_per_call(lambda: head(bank)):.0f} ms")
    print(f"  student forward+backward+step, 256 images: {ms_per_call(student_step):.0f} ms")
    print(f"  teacher forward+backward to the input, 256 images: "
          f"{ms_per_call(lambda: teacher(pixels).sum().backward()):.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
