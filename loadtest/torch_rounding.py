"""How far torch's own CPU kernels move one stream's step output when it is batched with others (issue 22).

``python -m loadtest.torch_rounding [--trials N] [--checkpoint RUN/checkpoint.pt]``: the language model's step
graph (a trained checkpoint, or the default 2x512 LSTM at random initialisation) run on the same stream alone and
inside batches of 2..64 streams of other lengths and states; prints the distribution of the largest absolute
difference per trial. This is why the export gate reports torch's alone-vs-batched figure and does not gate on it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from training.tasks.generate.export import torch_alone_vs_batched
from training.tasks.generate.model import CharLM, LMConfig, StepGraph
from training.tasks.generate.train import load_lm


def measure(graph: StepGraph, cfg: LMConfig, trials: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    n_state = 2 if cfg.rnn == "lstm" else 1
    worst = []
    for _ in range(trials):
        b = int(rng.integers(2, 65))
        k = int(rng.integers(1, 13))
        lens = rng.integers(1, k + 1, size=b)
        toks = rng.integers(0, cfg.vocab_size, size=(b, k))
        states = [rng.standard_normal((cfg.layers, b, cfg.hidden)).astype(np.float32) * 0.5 for _ in range(n_state)]
        worst.append(torch_alone_vs_batched(graph, toks, lens, states, int(rng.integers(0, b))))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--checkpoint", default="", help="a trained LM's checkpoint.pt (default: random 2x512 LSTM)")
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_lm(args.checkpoint)[0] if args.checkpoint else CharLM(LMConfig(vocab_size=66)).eval()
    d = np.array(measure(StepGraph(model).eval(), model.cfg, args.trials))
    print(
        json.dumps(
            {
                "trials": args.trials,
                "threads": torch.get_num_threads(),
                "max": float(d.max()),
                "p99": float(np.quantile(d, 0.99)),
                "median": float(np.median(d)),
                "exact_fraction": float(np.mean(d == 0.0)),
            }
        )
    )


if __name__ == "__main__":
    main()
