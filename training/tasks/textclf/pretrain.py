"""Pre-train the text classifier's language model: ``python -m training textlm --out runs/NAME [--text FILE ...]``.

ULMFiT's first stage on what installs offline: the unlabelled sides of the rated corpora's training splits and the
tweets (``data.pretraining_texts``), plus any text files given (``--text``; a dictd database such as Debian
``dict-gcide``'s ``/usr/share/dictd/gcide.dict.dz`` is read as its definitions). ULMFiT's general-then-target
order is two runs: the first with ``--text`` (general English, the target's text a small share of it), the
second with ``--init FIRST_RUN`` on the target's text alone, from the first run's tokenizer and weights. A linear
script:

* a sentencepiece unigram vocabulary (``--vocab`` pieces, ids 0-3 ``<pad> <unk> <s> </s>``) trained on that text,
  written as ``tokenizer.model`` in the run (the classifier and the service read the same file); with ``--init``
  the first run's, with its model and weights (the size flags are then the first run's);
* every sentence becomes ``<s> pieces </s>``, all of them one stream (shuffled by sentence, 2% held out), read
  as ``batch`` rows side by side in windows of ``bptt`` tokens with the state carried (truncated BPTT);
* the generation task's ``CharLM`` (one class for both: the LM is the same model over a different vocabulary),
  tied output layer, AdamW, clipping, a cosine learning rate over ``--max-steps`` (deterministic: the same seed
  gives the same model on a busy machine); ``--time-budget`` is an opt-in cap, reported as ``stopped_by``; the
  validation loss every ``--eval-every`` steps is ``metrics.json``'s ``val_curve``.

The run holds ``checkpoint.pt`` (the LM's weights and its ``LMConfig``, ``"task": "textlm"``),
``tokenizer.model``, ``config.json``, ``metrics.json`` and ``log.txt``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from service.core.tokens import BOS, EOS, Tokenizer, train_sentencepiece
from training.data import DataError
from training.loop import RunLog, pick_device, seed_everything
from training.tasks.generate.model import CharLM, LMConfig, detach
from training.tasks.textclf.data import pretraining_texts

VAL_FRACTION = 0.02


def add_textlm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--text", action="append", default=[], help="more unlabelled text, one sentence a line (repeat)")
    p.add_argument(
        "--init",
        default=None,
        help="a textlm run to go on from (its tokenizer, model and weights): ULMFiT's second stage, a language model "
        "pre-trained on general text (--text gcide.dict.dz) fine-tuned on the target domain's",
    )
    p.add_argument("--vocab", type=int, default=4000, help="sentencepiece pieces")
    p.add_argument("--rnn", default="lstm", choices=["lstm", "gru"])
    p.add_argument("--layers", type=int, default=2, help="1..3")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--embedding", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--batch", type=int, default=32, help="streams read side by side")
    p.add_argument("--bptt", type=int, default=64, help="tokens per truncated-BPTT window")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-steps", type=int, default=1500, help="optimizer steps; the learning rate's cosine spans them")
    p.add_argument("--time-budget", type=float, default=0.0, help="opt-in wall-clock cap in seconds (0: none)")
    p.add_argument("--eval-every", type=int, default=500, help="validation loss every this many steps (0: at the end)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--seed", type=int, default=0)


def encode_stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    ids: list[int] = []
    for t in texts:
        ids.append(BOS)
        ids.extend(tok.encode(t))
        ids.append(EOS)
    return np.asarray(ids, np.int64)


@torch.no_grad()
def stream_loss(model: CharLM, ids: np.ndarray, device: torch.device, rows: int = 8) -> float:
    """Mean loss per token over ``ids`` read as ``rows`` streams with the state carried."""
    model.eval()
    n = (len(ids) - 1) // rows
    x = torch.from_numpy(ids[: n * rows].reshape(rows, n))
    y = torch.from_numpy(ids[1 : n * rows + 1].reshape(rows, n))
    state, total = None, 0.0
    for i in range(0, n, 256):
        logits, state = model(x[:, i : i + 256].to(device), state)
        total += F.cross_entropy(logits.flatten(0, 1), y[:, i : i + 256].flatten().to(device), reduction="sum").item()
    model.train()
    return total / (n * rows)


def take_lm_run(run: str | Path, flag: str, out: Path) -> dict:
    """A ``textlm`` run's checkpoint (``state_dict``, ``config``), its tokenizer copied into ``out``; a directory
    that is not such a run is a ``DataError`` naming ``flag``."""
    run = Path(run)
    if not (run / "checkpoint.pt").exists() or not (run / "tokenizer.model").exists():
        raise DataError(f"{flag} {run}: not a `textlm` run (checkpoint.pt and tokenizer.model)")
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    if ck.get("task") != "textlm":
        raise DataError(f"{flag} {run}: its checkpoint is a {ck.get('task')!r} run, not `textlm`")
    shutil.copy2(run / "tokenizer.model", out / "tokenizer.model")
    return ck


def train_textlm(args: argparse.Namespace) -> dict:
    if args.max_steps < 1 or args.time_budget < 0:
        raise DataError("--max-steps must be >= 1 and --time-budget >= 0 (0: no cap)")
    t_start = time.perf_counter()
    seed_everything(args.seed)
    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "log.txt")
    texts, sources = pretraining_texts(args.text)
    order = np.random.default_rng(args.seed).permutation(len(texts))
    n_val = max(1, int(len(texts) * VAL_FRACTION))
    val_texts = [texts[i] for i in order[:n_val]]
    train_texts = [texts[i] for i in order[n_val:]]
    init = take_lm_run(args.init, "--init", out) if args.init else None
    if init is None:
        train_sentencepiece(train_texts, args.vocab, out / "tokenizer.model")
    tok = Tokenizer("sentencepiece", out / "tokenizer.model")
    train_ids, val_ids = encode_stream(tok, train_texts), encode_stream(tok, val_texts)
    if init is None:
        cfg = LMConfig(tok.vocab_size, args.rnn, args.embedding, args.hidden, args.layers, args.dropout, tied=True)
        model = CharLM(cfg).to(device)
    else:  # the first stage's model and weights, whatever the size flags say
        cfg = LMConfig(**init["config"])
        model = CharLM(cfg)
        model.load_state_dict(init["state_dict"])
        model.to(device)
        log(f"from {args.init}: validation {stream_loss(model, val_ids, device):.3f} nats/token before this stage")
    params = sum(p.numel() for p in model.parameters())
    log(f"pre-training text: {len(texts):,} sentences, {len(train_ids):,} training tokens; {'; '.join(sources)}")
    log(f"vocabulary {tok.vocab_size} sentencepiece pieces; model {cfg} ({params:,} parameters)")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    step, seen, epoch, warmup = 0, 0, 0, 50
    train_loss, stopped_by, done, curve = float("nan"), "steps", False, []
    t_loop = time.perf_counter()
    while not done:
        offset = int(rng.integers(args.bptt))
        n = (len(train_ids) - offset - 1) // args.batch
        rows = torch.from_numpy(train_ids[offset : offset + n * args.batch + 1])
        xs, ys = rows[:-1].view(args.batch, n), rows[1:].view(args.batch, n)
        state = None
        for i in range(0, n, args.bptt):
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
            x, y = xs[:, i : i + args.bptt].to(device), ys[:, i : i + args.bptt].to(device)
            logits, state = model(x, state)
            state = detach(state)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step, seen = step + 1, seen + x.numel()
            train_loss = loss.item() if math.isnan(train_loss) else 0.95 * train_loss + 0.05 * loss.item()
            if step % 100 == 0:
                log(f"{elapsed:6.0f}s step {step}/{args.max_steps} epoch {epoch} lr {lr:.2e} train {train_loss:.3f}")
            if args.eval_every and step % args.eval_every == 0 and step < args.max_steps:
                curve.append({"step": step, "val_loss_nats": stream_loss(model, val_ids, device)})
                log(f"step {step}: validation {curve[-1]['val_loss_nats']:.3f} nats/token")
        epoch += 1
    train_seconds = time.perf_counter() - t_loop
    val = stream_loss(model, val_ids, device)
    curve.append({"step": step, "val_loss_nats": val})
    metrics = {
        "task": "textlm",
        "init": args.init,
        "pretraining_text": sources,
        "sentences": len(texts),
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "vocab_size": tok.vocab_size,
        "val_loss_nats": val,
        "val_perplexity": math.exp(val),
        "val_curve": curve,
        "train_loss": train_loss,
        "steps": step,
        "planned_steps": args.max_steps,
        "stopped_by": stopped_by,
        "epochs": round(seen / len(train_ids), 2),
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "parameters": params,
        "seed": args.seed,
    }
    log(json.dumps(metrics))
    model.cpu()
    run_config = {"task": "textlm", "tokenizer": "sentencepiece", "config": cfg.to_dict(), "vocab": tok.pieces}
    torch.save({"state_dict": model.state_dict(), **run_config}, out / "checkpoint.pt")
    args_d = {k: v for k, v in vars(args).items() if k != "func"}
    (out / "config.json").write_text(json.dumps({**run_config, "vocab": None, "args": args_d}, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.close()
    return metrics
