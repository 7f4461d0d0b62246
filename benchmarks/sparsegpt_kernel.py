"""SparseGPT's kernel alone, at SmolLM2-135M's layer shapes (issue 24 item 11): the stepped in-block loop
against the columnwise loop it replaced (kept for the tests in tests/_sparsegpt_columnwise.py).
CPU seconds of one ``sparsegpt()`` call per layer shape (a Hessian of 8192 random tokens with uneven
channel scales), median of ``--rounds`` interleaved rounds, and whether the masks are identical.

    PYTHONPATH=src python benchmarks/sparsegpt_kernel.py [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _sparsegpt_columnwise import columnwise_prune_block  # noqa: E402

import trimtune.prune.sparsegpt as kernel  # noqa: E402

SHAPES = {"gate/up": (1536, 576), "q/o": (576, 576), "k/v": (192, 576), "down": (576, 1536)}


def run(loop, weight, hessian, sparsity, n, m):
    kernel._prune_block = loop
    start = time.process_time()
    new, keep = kernel.sparsegpt(weight, hessian, sparsity, n, m, selection="reference")
    return time.process_time() - start, new, keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stepped = kernel._prune_block
    torch.manual_seed(0)
    print(f"| layer | sparsity | columnwise CPU s | stepped CPU s | masks identical | largest weight difference |  ({args.threads} threads)")
    for name, (rows, columns) in SHAPES.items():
        x = torch.randn(8192, columns) * torch.linspace(0.2, 3.0, columns)
        hessian = 2 * x.t() @ x / len(x)
        weight = torch.randn(rows, columns)
        for sparsity, n, m in ((0.5, 0, 0), (None, 2, 4)):
            times = {"columnwise": [], "stepped": []}
            for _ in range(args.rounds):  # interleaved, so a change in load hits both alike
                t_slow, slow_w, slow_keep = run(columnwise_prune_block, weight, hessian, sparsity, n, m)
                t_fast, fast_w, fast_keep = run(stepped, weight, hessian, sparsity, n, m)
                times["columnwise"].append(t_slow)
                times["stepped"].append(t_fast)
            kernel._prune_block = stepped
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            print(f"| {name} {rows} x {columns} | {sparsity or f'{n}:{m}'} | {med['columnwise']:.3f} | {med['stepped']:.3f} | "
                  f"{torch.equal(slow_keep, fast_keep)} | {(slow_w - fast_w).abs().max():.1e} |")


if __name__ == "__main__":
    main()
