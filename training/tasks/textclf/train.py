"""Fine-tune a text classifier: ``python -m training textclf --pretrained LM_RUN|none --train movie --out RUN``.

ULMFiT's classifier stage (Howard & Ruder 2018), top to bottom:

* the data: a preset corpus or a ``label<TAB>text`` file (``data.load_corpus``), each text ``<s>`` + its pieces
  (at most ``MAX_TOKENS``) through the LM run's ``tokenizer.model``; from scratch (``--pretrained none``) a
  tokenizer of the same size is trained on the training texts alone;
* the model: ``TextClassifier`` (the LM's encoder, concat pooling, a head); its encoder loaded from the LM run;
* **gradual unfreezing** (``--unfreeze gradual``): the first epoch trains the head only, each later epoch
  unfreezes one more group from the top (the last RNN layer, then the one below, ..., then the embedding);
* **discriminative learning rates** (``--discriminative 2.6``): a group ``d`` groups below the head learns at
  ``lr / 2.6**d``;
* **slanted triangular** learning rate over all steps (10% rising, then falling to 1/32 of the peak);
* batches of similar length (``training.loop.length_batches``), the best epoch on validation accuracy kept;
* from scratch the same model, schedule and epochs.

The defaults train every group from the first epoch at one rate (``--unfreeze all --discriminative 1``): with a
language model pre-trained on 584k tokens (what two cores allow), ULMFiT's frozen first epochs and small lower
rates lost 6 points of accuracy on the movie sentences (docs/textclf.md measures both), its features being far
from what the classifier needs; the pre-trained weights are still the start, and still worth it.

Peak rates: 4e-3 with pre-training, 1e-3 from scratch (``--lr`` sets either): what ``make eval-textclf``
picked on the validation splits (from scratch, 4e-3 left the model answering one class on the movie sentences).

``--feedback FILE`` (what the server's ``POST /feedback`` keeps) adds the file's texts to the training texts but
a hashed ``--feedback-holdout`` share of them, which is scored apart (``metrics.json`` ``feedback``); the test
texts stay the corpus's, so a retrained model compares with the served one on the same sentences.

``--few-labels 0.1`` (the default) also trains a second model on a stratified 10% of the training labels and
records its scores beside the full model's (the model saved is the full one). ``metrics.json``: accuracy and
macro-F1 on validation and test, for both, with the epochs, the seconds and whether the budget cut the run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from service.core.tokens import BOS, PAD, Tokenizer, train_sentencepiece
from training.data import DataError
from training.loop import RunLog, length_batches, pick_device, seed_everything
from training.tasks.generate.model import LMConfig
from training.tasks.textclf.data import Corpus, Split, label_fraction, load_corpus, read_feedback
from training.tasks.textclf.model import ClfConfig, TextClassifier
from training.tasks.textclf.pretrain import take_lm_run

MAX_TOKENS = 256  # training texts are cut here (the service's limit is in the artifact)
LR_PRETRAINED, LR_SCRATCH = 4e-3, 1e-3  # peak rates picked on validation by make eval-textclf


def add_textclf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained", required=True, help="a `textlm` run directory, or none (from scratch)")
    p.add_argument("--train", default="movie", help="movie, amazon, nyt (data/vader) or a label<TAB>text file")
    p.add_argument("--test", default=None, help="a label<TAB>text file of held-out texts (default: the split)")
    p.add_argument("--feedback", default=None, help="a feedback file (POST /feedback's label<TAB>text lines) to add")
    p.add_argument("--feedback-holdout", type=float, default=0.2, help="share of feedback texts scored, not trained")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate (default {LR_PRETRAINED:g} with pre-training, {LR_SCRATCH:g} from scratch)",
    )
    p.add_argument(
        "--discriminative", type=float, default=1.0, help="each group below learns this many times less (ULMFiT: 2.6)"
    )
    p.add_argument(
        "--unfreeze", default="all", choices=["gradual", "all"], help="gradual: ULMFiT's, one group more per epoch"
    )
    p.add_argument("--dropout", type=float, default=0.3, help="the head's dropout")
    p.add_argument("--encoder-dropout", type=float, default=-1.0, help="the encoder's dropout (< 0: the LM's own)")
    p.add_argument("--few-labels", type=float, default=0.1, help="also train on this share of the labels (0: off)")
    p.add_argument("--labels", type=float, default=1.0, help="train the saved model on this share of the labels")
    p.add_argument("--time-budget", type=float, default=0.0, help="opt-in wall-clock cap per model (0: none)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--seed", type=int, default=0)
    scratch = p.add_argument_group("from scratch (--pretrained none): the encoder `textlm` would have built")
    scratch.add_argument("--vocab", type=int, default=4000, help="sentencepiece pieces, trained on the training texts")
    scratch.add_argument("--rnn", default="lstm", choices=["lstm", "gru"])
    scratch.add_argument("--layers", type=int, default=2)
    scratch.add_argument("--hidden", type=int, default=512)
    scratch.add_argument("--embedding", type=int, default=256)


def encode(tok: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray([BOS, *tok.encode(t)[: MAX_TOKENS - 1]], np.int64) for t in texts]


def padded(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = np.array([len(s) for s in seqs], np.int64)
    x = np.full((len(seqs), int(lengths.max())), PAD, np.int64)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return torch.from_numpy(x), torch.from_numpy(lengths)


@torch.no_grad()
def predict(model: TextClassifier, seqs: list[np.ndarray], device: torch.device) -> np.ndarray:
    """Class probabilities for ``seqs`` (in their order), batched by length."""
    model.eval()
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.empty((len(seqs), model.cfg.classes), np.float32)
    for i in range(0, len(seqs), 128):
        idx = order[i : i + 128]
        x, lengths = padded([seqs[j] for j in idx])
        logits, _ = model(x.to(device), lengths.to(device))
        out[idx] = F.softmax(logits, -1).cpu().numpy()
    model.train()
    return out


def scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and macro-F1."""
    pred = probs.argmax(1)
    f1 = []
    for c in range(probs.shape[1]):
        tp = int(((pred == c) & (labels == c)).sum())
        fp, fn = int(((pred == c) & (labels != c)).sum()), int(((pred != c) & (labels == c)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": float((pred == labels).mean()), "macro_f1": float(np.mean(f1)), "texts": len(labels)}


def stlr(step: int, total: int, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """The slanted triangular schedule's factor of the peak rate at ``step`` of ``total``."""
    cut = max(1, int(total * cut_frac))
    p = step / cut if step < cut else 1 - (step - cut) / max(1, cut * (1 / cut_frac - 1))
    return (1 + p * (ratio - 1)) / ratio


def fit(
    model: TextClassifier, train: tuple[list[np.ndarray], np.ndarray], val: tuple[list[np.ndarray], np.ndarray],
    args: argparse.Namespace, pretrained: bool, device: torch.device, log: RunLog,
) -> dict:  # fmt: skip
    """Train ``model`` in place (its best validation epoch kept); the history and how it ended."""
    seqs, labels = train
    groups = model.groups()
    depth = len(groups) - 1
    rates = [args.lr / (args.discriminative ** (depth - g) if pretrained else 1.0) for g in range(len(groups))]
    opt = torch.optim.AdamW([{"params": p, "lr": r} for p, r in zip(groups, rates)], weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    lengths = np.array([len(s) for s in seqs])
    per_epoch = -(-len(seqs) // args.batch)
    total, step = args.epochs * per_epoch, 0
    best, best_state, history, stopped_by = -1.0, None, [], "epochs"
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        if args.time_budget and time.perf_counter() - t0 >= args.time_budget:
            stopped_by = "time_budget"
            log(f"time budget {args.time_budget:.0f}s cut the run short before epoch {epoch + 1} of {args.epochs}")
            break
        live = len(groups) if not pretrained or args.unfreeze == "all" else min(len(groups), epoch + 1)
        for g, params in enumerate(groups):
            for p in params:
                p.requires_grad_(g >= len(groups) - live)
        loss_sum = 0.0
        for idx in length_batches(lengths, args.batch, rng):
            factor = stlr(step, total)
            for group, r in zip(opt.param_groups, rates):
                group["lr"] = r * factor
            x, lens = padded([seqs[i] for i in idx])
            logits, _ = model(x.to(device), lens.to(device))
            loss = F.cross_entropy(logits, torch.from_numpy(labels[idx]).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_sum, step = loss_sum + loss.item() * len(idx), step + 1
        val_scores = scores(predict(model, val[0], device), val[1])
        history.append({"epoch": epoch + 1, "groups_trained": live, "train_loss": loss_sum / len(seqs),
                        "val_accuracy": val_scores["accuracy"], "seconds": time.perf_counter() - t0})  # fmt: skip
        log(f"epoch {epoch + 1}/{args.epochs} groups {live}/{len(groups)} loss {loss_sum / len(seqs):.4f} "
            f"val {val_scores['accuracy']:.4f}")  # fmt: skip
        if val_scores["accuracy"] > best:
            best, best_state = val_scores["accuracy"], {k: v.detach().clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.requires_grad_(True)
    if best_state is not None:
        model.load_state_dict(best_state)
    best_epoch = max(history, key=lambda h: h["val_accuracy"])["epoch"] if history else 0
    return {"history": history, "best_epoch": best_epoch, "stopped_by": stopped_by,
            "train_seconds": time.perf_counter() - t0}  # fmt: skip


def build(args: argparse.Namespace, corpus: Corpus, out: Path, log: RunLog) -> tuple[Tokenizer, ClfConfig, dict]:
    """The tokenizer (the LM's, or trained here), the model config and the LM's weights (or None)."""
    if args.pretrained == "none":
        train_sentencepiece(corpus.train.texts, args.vocab, out / "tokenizer.model")
        lm_cfg = LMConfig(0, args.rnn, args.embedding, args.hidden, args.layers, 0.2, tied=True)
        lm_state = None
    else:
        ck = take_lm_run(args.pretrained, "--pretrained", out)
        lm_cfg, lm_state = LMConfig(**ck["config"]), ck["state_dict"]
    tok = Tokenizer("sentencepiece", out / "tokenizer.model")
    lm = {**lm_cfg.to_dict(), "vocab_size": tok.vocab_size}
    cfg = ClfConfig(lm=lm, classes=len(corpus.classes), dropout=args.dropout, encoder_dropout=args.encoder_dropout)
    log(f"tokenizer {tok.vocab_size} pieces; encoder {lm}; pre-trained: {args.pretrained}")
    return tok, cfg, lm_state


def train_one(args, cfg, lm_state, data, device, log) -> tuple[TextClassifier, dict]:  # noqa: ANN001
    seed_everything(args.seed)
    model = TextClassifier(cfg)
    if lm_state is not None:
        model.from_lm(lm_state)
    model.to(device)
    return model, fit(model, data["train"], data["val"], args, lm_state is not None, device, log)


def train_textclf(args: argparse.Namespace) -> dict:
    """Run one training (and the few-labels one); return the metrics (also in ``--out/metrics.json``)."""
    if args.lr is None:  # what make eval-textclf picked on validation (docs/textclf.md)
        args.lr = LR_SCRATCH if args.pretrained == "none" else LR_PRETRAINED
    if args.epochs < 1 or not 0 < args.labels <= 1 or not 0 <= args.few_labels < 1:
        raise DataError("--epochs must be >= 1, --labels in (0, 1] and --few-labels in [0, 1)")
    if not 0 <= args.feedback_holdout < 1:
        raise DataError("--feedback-holdout must be in [0, 1)")
    t_start = time.perf_counter()
    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "log.txt")
    corpus = load_corpus(args.train, args.test)
    log(f"{corpus.source}: classes {corpus.classes}, train/val/test {len(corpus.train)}/{len(corpus.val)}/"
        f"{len(corpus.test)}")  # fmt: skip
    feedback = None
    if args.feedback:
        scored = set(corpus.val.texts) | set(corpus.test.texts)
        feedback = read_feedback(Path(args.feedback), corpus.classes, args.feedback_holdout, scored)
        corpus.train = corpus.train.plus(feedback.train)
        log(f"feedback {feedback.source}: {len(feedback.train)} added to training, {len(feedback.holdout)} held out, "
            f"{feedback.scored} of the validation or test split not trained on")  # fmt: skip
    tok, cfg, lm_state = build(args, corpus, out, log)

    def encoded(split: Split) -> tuple[list[np.ndarray], np.ndarray]:
        return encode(tok, split.texts), split.labels

    val, test = encoded(corpus.val), encoded(corpus.test)
    results = {}
    for name, share in (("full", args.labels), ("few_labels", args.few_labels)):
        if not share:
            continue
        part = label_fraction(corpus.train, share, args.seed)
        log(f"--- {name}: {len(part)} labelled training texts ({share:.0%}) ---")
        model, fitted = train_one(args, cfg, lm_state, {"train": encoded(part), "val": val}, device, log)
        results[name] = {
            "labels_fraction": share,
            "train_texts": len(part),
            "val": scores(predict(model, val[0], device), val[1]),
            "test": scores(predict(model, test[0], device), test[1]),
            **fitted,
        }
        log(f"{name}: test accuracy {results[name]['test']['accuracy']:.4f}, macro-F1 "
            f"{results[name]['test']['macro_f1']:.4f}")  # fmt: skip
        if name == "full":
            saved = model
            if feedback is not None and len(feedback.holdout):
                held = encoded(feedback.holdout)
                results[name]["feedback_holdout"] = scores(predict(model, held[0], device), held[1])
    full = results["full"]
    lengths = [len(s) for s in encode(tok, corpus.train.texts)]
    metrics = {
        "task": "textclf",
        "data": args.train,
        "source": corpus.source,
        "classes": corpus.classes,
        "pretrained": args.pretrained,
        "accuracy": full["test"]["accuracy"],
        "macro_f1": full["test"]["macro_f1"],
        "few_labels": {k: results["few_labels"][k] for k in ("labels_fraction", "train_texts", "test", "val")}
        if "few_labels" in results
        else None,
        "feedback": None
        if feedback is None
        else {
            "source": feedback.source,
            "train_texts": len(feedback.train),
            "holdout_texts": len(feedback.holdout),
            "holdout": full.get("feedback_holdout"),
        },  # fmt: skip
        "runs": results,
        "train_seconds": sum(r["train_seconds"] for r in results.values()),
        "total_seconds": time.perf_counter() - t_start,
        "seed": args.seed,
        "lr": args.lr,
    }
    log(json.dumps({k: metrics[k] for k in ("accuracy", "macro_f1", "few_labels", "total_seconds")}))
    saved.cpu()
    config = {
        "task": "textclf",
        "config": cfg.to_dict(),
        "classes": corpus.classes,
        "data": args.train,
        "test": args.test,
        "pretrained": args.pretrained,
        "length_range": [int(min(lengths)), int(max(lengths))],
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }
    torch.save({"state_dict": saved.state_dict(), **{k: config[k] for k in ("task", "config", "classes")}},
               out / "checkpoint.pt")  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.close()
    return metrics


def load_textclf(path: str | Path) -> tuple[TextClassifier, dict]:
    """A trained classifier from ``checkpoint.pt`` (eval mode, CPU) and its checkpoint dict."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("task") != "textclf":
        raise ValueError(f"{path}: not a text-classifier checkpoint")
    model = TextClassifier(ClfConfig(**ck["config"]))
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck
