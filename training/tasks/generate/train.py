"""Train a character language model: ``python -m training lm --text FILE --out runs/NAME``.

A linear script in the manner of pytorch/examples' ``word_language_model`` and nanoGPT:

* the text becomes character ids (``training.data.read_text``); the last 10% is validation (nanoGPT's split);
* the training part is cut into ``batch`` contiguous streams read side by side in windows of ``bptt``
  characters (truncated BPTT), the state carried from one window to the next, each epoch from a new offset;
* AdamW, gradient clipping, a cosine learning rate planned over ``--max-steps`` steps (1750 by default), so the
  same seed gives the same model on an idle or a busy machine; ``--time-budget`` is an opt-in wall-clock cap:
  the schedule then anneals by whichever of the two ends first, and the log and ``metrics.json``
  (``stopped_by``) say when the cap cut the run short;
* validation: ``val_loss_nats`` on 256-character windows each from a zero state (nanoGPT's protocol, so the
  figures compare); ``val_loss_nats_carried`` with the state carried: the validation text is cut into 16
  pieces read side by side, each carrying its state through its ~7k characters; ``val_bits_per_char``;
* the run directory holds ``checkpoint.pt``, ``config.json``, ``metrics.json``, ``samples.txt``, ``log.txt``
  and ``learning_curves.png``, as the classifier's runs do.

Sizes come from the data when not given: wider for more text, a tied, projected output layer and a larger
embedding for a large vocabulary (where the output layer is most of the cost), more dropout for little text.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import data
from training.loop import RunLog, pick_device, plot_curves, seed_everything
from training.tasks.generate.model import CharLM, LMConfig, detach

VAL_FRACTION = 0.1
VAL_WINDOW = 256  # nanoGPT's block size
CARRIED_PIECES = 16


def add_lm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", required=True, help="a UTF-8 text file")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--documents", default="none", choices=["none", "lines"], help="lines: one document a line")
    p.add_argument("--rnn", default="lstm", choices=["lstm", "gru"])
    p.add_argument("--layers", type=int, default=2, help="1..3")
    p.add_argument("--hidden", type=int, default=0, help="0: from the amount of text")
    p.add_argument("--embedding", type=int, default=0, help="0: from the vocabulary size")
    p.add_argument("--tied", default="auto", choices=["auto", "yes", "no"], help="auto: tied for a large vocabulary")
    p.add_argument("--dropout", type=float, default=-1.0, help="< 0: from the amount of text")
    p.add_argument("--batch", type=int, default=32, help="streams read side by side")
    p.add_argument("--bptt", type=int, default=128, help="characters per truncated-BPTT window")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=1750, help="optimizer steps; the learning-rate schedule spans them")
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="opt-in wall-clock cap in seconds (0: none); the schedule anneals by steps or time, whichever ends first",
    )
    p.add_argument("--eval-every", type=float, default=60.0, help="seconds between validation points")
    p.add_argument("--device", default="auto", help="auto (CUDA when it works), cpu or cuda")
    p.add_argument("--seed", type=int, default=0)


def sizes(args: argparse.Namespace, n_train: int, vocab_size: int) -> LMConfig:
    """The model for this much text and this vocabulary, where the options leave it open."""
    hidden = args.hidden or (512 if n_train >= 500_000 else 256 if n_train >= 100_000 else 128)
    large_vocab = vocab_size > 1000
    tied = args.tied == "yes" or (args.tied == "auto" and large_vocab)
    embedding = args.embedding or (256 if large_vocab else 64)
    dropout = args.dropout if args.dropout >= 0 else (0.1 if n_train >= 1_000_000 else 0.2)
    return LMConfig(vocab_size, args.rnn, embedding, hidden, args.layers, dropout, tied)


def streams(ids: np.ndarray, batch: int, offset: int) -> torch.Tensor:
    """``ids[offset:]`` as ``batch`` contiguous rows [batch, N // batch]."""
    n = (len(ids) - offset) // batch
    return torch.from_numpy(ids[offset : offset + n * batch].reshape(batch, n))


@torch.no_grad()
def val_loss_windows(model: CharLM, ids: np.ndarray, device: torch.device, limit: int = 0) -> float:
    """Mean loss over non-overlapping 256-character windows, each from a zero state (``limit``: first N)."""
    model.eval()
    n = (len(ids) - 1) // VAL_WINDOW
    n = min(n, limit) if limit else n
    x = torch.from_numpy(ids[: n * VAL_WINDOW].reshape(n, VAL_WINDOW))
    y = torch.from_numpy(ids[1 : n * VAL_WINDOW + 1].reshape(n, VAL_WINDOW))
    total = 0.0
    for i in range(0, n, 64):
        logits, _ = model(x[i : i + 64].to(device))
        total += F.cross_entropy(logits.flatten(0, 1), y[i : i + 64].flatten().to(device), reduction="sum").item()
    model.train()
    return total / (n * VAL_WINDOW)


@torch.no_grad()
def val_loss_carried(model: CharLM, ids: np.ndarray, device: torch.device) -> float:
    model.eval()
    x, y = streams(ids[:-1], CARRIED_PIECES, 0), streams(ids[1:], CARRIED_PIECES, 0)
    state, total = None, 0.0
    for i in range(0, x.shape[1], 512):
        logits, state = model(x[:, i : i + 512].to(device), state)
        total += F.cross_entropy(logits.flatten(0, 1), y[:, i : i + 512].flatten().to(device), reduction="sum").item()
    model.train()
    return total / x.numel()


@torch.no_grad()
def sample(model: CharLM, vocab: list[str], prompt: list[int], n: int, temperature: float, seed: int) -> str:
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    logits, state = model(torch.tensor([prompt], device=device))
    out = []
    for _ in range(n):
        probs = F.softmax(logits[0, -1].float().cpu() / temperature, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=gen))
        out.append(token)
        logits, state = model(torch.tensor([[token]], device=device), state)
    model.train()
    return "".join(vocab[t] if len(vocab[t]) == 1 else ("\n" if vocab[t] == data.EOS else "") for t in out)


def train_lm(args: argparse.Namespace) -> dict:
    """Run one training; return the metrics (also in ``--out/metrics.json``)."""
    if args.max_steps < 1 or args.time_budget < 0:
        raise data.DataError("--max-steps must be >= 1 and --time-budget >= 0 (0: no cap)")
    t_start = time.perf_counter()
    seed_everything(args.seed)
    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "log.txt")

    text = data.read_text(args.text, args.documents)
    split = int(len(text.ids) * (1 - VAL_FRACTION))
    train_ids, val_ids = text.ids[:split], text.ids[split:]
    cfg = sizes(args, len(train_ids), len(text.vocab))
    model = CharLM(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    log(
        f"text {args.text}: {len(text.ids):,} tokens, vocabulary {len(text.vocab)}, model {cfg} ({params:,} parameters)"
    )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}], lr=args.lr
    )
    rng = np.random.default_rng(args.seed)
    warmup, step, seen, epoch = 50, 0, 0, 0
    history: list[dict] = []
    train_loss, next_eval = float("nan"), args.eval_every
    t_loop = time.perf_counter()
    done, stopped_by = False, "steps"
    while not done:
        rows = streams(train_ids, args.batch, int(rng.integers(args.bptt)))
        state = None
        for i in range(0, rows.shape[1] - 1, args.bptt):
            elapsed = time.perf_counter() - t_loop
            if step >= args.max_steps or (args.time_budget and elapsed >= args.time_budget):
                done = True
                if step < args.max_steps:
                    stopped_by = "time_budget"
                    log(f"time budget {args.time_budget:.0f}s cut the run short at step {step} of {args.max_steps}")
                break
            frac = min(1.0, max(step / args.max_steps, elapsed / args.time_budget if args.time_budget else 0.0))
            lr = args.lr * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            x = rows[:, i : i + args.bptt].to(device)
            y = rows[:, i + 1 : i + 1 + args.bptt].to(device)
            x = x[:, : y.shape[1]]
            logits, state = model(x, state)
            state = detach(state)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            step, seen = step + 1, seen + x.numel()
            train_loss = loss.item() if math.isnan(train_loss) else 0.95 * train_loss + 0.05 * loss.item()
            if elapsed >= next_eval:
                next_eval += args.eval_every
                val = val_loss_windows(model, val_ids, device, limit=64)
                history.append({"seconds": elapsed, "step": step, "train_loss": train_loss, "val_loss": val})
                log(f"{elapsed:6.0f}s step {step} epoch {epoch} lr {lr:.2e} train {train_loss:.3f} val~ {val:.3f}")
        epoch += 1
    train_seconds = time.perf_counter() - t_loop
    val = val_loss_windows(model, val_ids, device)
    carried = val_loss_carried(model, val_ids, device)
    history.append({"seconds": train_seconds, "step": step, "train_loss": train_loss, "val_loss": val})
    prompt = [text.specials.get(data.BOS, 0)] if text.documents == "lines" else [int(text.ids[0])]
    samples = [sample(model, text.vocab, prompt, 300, t, args.seed + k) for k, t in enumerate((0.8, 1.0))]
    for t, s in zip((0.8, 1.0), samples):
        log(f"--- sample, temperature {t} ---\n{s}")
    metrics = {
        "task": "generate",
        "data": str(args.text),
        "documents": text.documents,
        "vocab_size": len(text.vocab),
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "val_loss_nats": val,
        "val_loss_nats_carried": carried,
        "val_bits_per_char": val / math.log(2),
        "steps": step,
        "planned_steps": args.max_steps,
        "time_budget": args.time_budget,
        "stopped_by": stopped_by,
        "epochs": round(seen / len(train_ids), 2),
        "tokens_per_s": seen / train_seconds,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "parameters": params,
        "device": device.type,
        "torch_threads": torch.get_num_threads(),
    }
    log(json.dumps(metrics))
    run_config = {"task": "generate", "config": cfg.to_dict(), "vocab": text.vocab, "documents": text.documents}
    model.cpu()
    torch.save({"state_dict": model.state_dict(), **run_config}, out / "checkpoint.pt")
    (out / "config.json").write_text(
        json.dumps(
            {**run_config, "args": {k: v for k, v in vars(args).items() if k != "func"}}, indent=2, ensure_ascii=False
        )
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "samples.txt").write_text("\n\n".join(samples), encoding="utf-8")
    lines = {"train (smoothed)": [h["train_loss"] for h in history], "validation": [h["val_loss"] for h in history]}
    panels = [("learning curve", "nats per character", lines)]
    plot_curves(out / "learning_curves.png", "seconds", [h["seconds"] for h in history], panels)
    log.close()
    return metrics


def load_lm(path: str | Path) -> tuple[CharLM, dict]:
    """A trained language model from ``checkpoint.pt`` (eval mode, CPU) and its run config."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("task") != "generate":
        raise ValueError(f"{path}: not a language-model checkpoint")
    model = CharLM(LMConfig(**ck["config"]))
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck
