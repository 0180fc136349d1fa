"""Train the translator: ``python -m training translate --out runs/translate [--train pairs.tsv --test pairs.tsv]``.

A linear script:

* pairs: by default the Ding dictionary (``data.read_ding``): its ~16k sentence pairs are split (seeded) into
  test (1,000), validation (500) and training, and its phrase pairs join the training side; or the user's TSV
  files (``--train``, optional ``--test``; validation and, without ``--test``, test come out of ``--train``).
  The run keeps ``test.tsv`` and ``valid.tsv``;
* tokens: a joint unigram sentencepiece vocabulary trained on the training side only (``--tokenizer
  sentencepiece``, ``--vocab``), or characters (``--tokenizer chars``);
* batches of similar source lengths (a pool of batches is sorted by length, then shuffled), a share of each
  batch from the sentence pairs (``--sentence-share``, 0.75: the phrases far outnumber the sentences; held-out
  beam-5 chrF 27.0 against 26.4 with 0.5);
* a sampled softmax (``--softmax sampled``, the default; ``Candidates``): each batch's loss runs over the tokens
  of its targets and ``--negatives`` drawn ones (~1,300 of 8,000), their logits corrected by the log-probability
  of being drawn, which nearly halves a step's time on two cores; validation and test decode over the whole
  vocabulary, as the exported graph does (``--softmax full`` trains over it too);
* teacher forcing, label smoothing, AdamW, gradient clipping, a linear warm-up and a cosine learning rate over
  ``--max-steps`` (the same seed gives the same model on an idle or a busy machine); ``--time-budget`` (900 s
  by default) caps the run and ``metrics.json`` says when it did (``stopped_by``);
* every ``--eval-every`` steps, greedy chrF on the validation pairs; the best checkpoint is kept and training
  stops after ``--patience`` evaluations without a better one (early stopping);
* at the end, greedy and beam-5 chrF, BLEU and TER on the test pairs (sacrebleu, with its signature), the
  copy-the-source floor, samples; ``checkpoint.pt``, ``config.json``, ``metrics.json``, ``log.txt``,
  ``learning_curves.png``, ``tokenizer.model`` (sentencepiece) in the run directory.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import sacrebleu
import torch

from service.core.tokens import BOS, EOS, PAD, Tokenizer, char_inventory, train_sentencepiece
from training.loop import RunLog, pick_device, plot_curves, progress_bar, seed_everything
from training.tasks.translate import decode
from training.tasks.translate.data import DataError, Pairs, read_ding, read_tsv, split
from training.tasks.translate.model import ATTENTIONS, RNN_TYPES, S2SConfig, Seq2Seq


def add_translate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--train", default=None, help="source<TAB>target pairs (default: the Ding dictionary)")
    p.add_argument("--test", default=None, help="held-out pairs (default: split from the training pairs)")
    p.add_argument("--test-size", type=int, default=1000, help="held-out pairs when split")
    p.add_argument("--valid-size", type=int, default=500, help="validation pairs (early stopping)")
    p.add_argument("--tokenizer", default="sentencepiece", choices=["sentencepiece", "chars"])
    p.add_argument("--vocab", type=int, default=8000, help="sentencepiece vocabulary size")
    p.add_argument("--rnn", default="gru", choices=sorted(RNN_TYPES))
    p.add_argument("--attention", default="bahdanau", choices=list(ATTENTIONS))
    p.add_argument("--embedding", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--enc-layers", type=int, default=2)
    p.add_argument("--dec-layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    p.add_argument("--softmax", default="sampled", choices=["sampled", "full"], help="training's output softmax")
    p.add_argument("--negatives", type=int, default=1024, help="tokens drawn per batch for the sampled softmax")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sentence-share", type=float, default=0.75, help="share of each batch from sentence pairs")
    p.add_argument("--max-tokens", type=int, default=64, help="longest source/target kept for training")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=6000, help="optimizer steps; the schedule spans them")
    p.add_argument("--time-budget", type=float, default=900.0, help="wall-clock cap in seconds (0: none)")
    p.add_argument("--eval-every", type=int, default=500, help="steps between validation chrF points")
    p.add_argument("--patience", type=int, default=3, help="evaluations without a better chrF before stopping")
    p.add_argument("--beam", type=int, default=5, help="beam width of the test measurement")
    p.add_argument("--device", default="auto", help="auto (CUDA when it works), cpu or cuda")
    p.add_argument("--seed", type=int, default=0)


def load_pairs(args: argparse.Namespace) -> tuple[Pairs, Pairs, Pairs, Pairs, str]:
    """(train, phrases (training only), valid, test, a description of the data)."""
    if args.train:
        pairs = read_tsv(Path(args.train))
        if args.test:
            test = read_tsv(Path(args.test))
            train, valid, _ = split(pairs, 0, args.valid_size, args.seed)
        else:
            train, valid, test = split(pairs, args.test_size, args.valid_size, args.seed)
        return train, Pairs([], []), valid, test, f"{args.train} ({len(pairs)} pairs)"
    sentences, phrases = read_ding()
    train, valid, test = split(sentences, args.test_size, args.valid_size, args.seed)
    held = set(valid.source) | set(test.source)
    keep = [i for i, s in enumerate(phrases.source) if s not in held]
    described = f"Ding de-en: {len(sentences)} sentence pairs, {len(keep)} phrase pairs"
    return train, phrases.take(keep), valid, test, described


def encode_all(tok: Tokenizer, texts: list[str], limit: int) -> list[list[int]]:
    return [tok.encode(t)[:limit] for t in texts]


def padded(seqs: list[list[int]], prefix: list[int] = (), suffix: list[int] = ()) -> torch.Tensor:
    rows = [[*prefix, *s, *suffix] for s in seqs]
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def batches(
    lengths: np.ndarray, groups: list[np.ndarray], shares: list[float], size: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Endless batches of row ids: ``shares`` of each batch from each group, a pool of 50 batches sorted by
    source length and shuffled (little padding, random order)."""
    counts = [round(size * s) for s in shares]
    counts[-1] = size - sum(counts[:-1])
    while True:
        pool = np.concatenate([rng.choice(g, 50 * c) for g, c in zip(groups, counts) if c > 0 and len(g)])
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        chunks = [pool[i : i + size] for i in range(0, len(pool), size)]
        for j in rng.permutation(len(chunks)):
            yield chunks[j]


class Candidates:
    """The sampled softmax's candidates for a batch (``Seq2Seq.loss``): every token of the batch's targets, pad,
    and ``negatives`` tokens drawn uniformly (with replacement); ``log_q`` is the log of the probability that a
    token is among them, from its frequency in the training targets (a frequent token nearly always is, so its
    logit is barely corrected; a rare one that happens to be there is corrected the most)."""

    def __init__(self, targets: list[list[int]], vocab: int, negatives: int, seed: int) -> None:
        counts = np.bincount(np.concatenate([np.asarray(t + [EOS], np.int64) for t in targets]), minlength=vocab)
        freq = torch.tensor(counts / counts.sum(), dtype=torch.float64).clamp(max=1 - 1e-9)
        self.log_absent = torch.log1p(-freq)  # log P(a target token is not this one)
        self.vocab, self.negatives = vocab, negatives
        self.log_undrawn = negatives * math.log1p(-1.0 / vocab)
        self.rng = torch.Generator().manual_seed(seed)

    def __call__(self, tgt_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drawn = torch.randint(0, self.vocab, (self.negatives,), generator=self.rng)
        ids = torch.unique(torch.cat([tgt_out.flatten().cpu(), drawn, torch.tensor([PAD])]))
        n = int((tgt_out != PAD).sum())
        log_miss = n * self.log_absent[ids] + self.log_undrawn
        log_q = torch.log(-torch.expm1(log_miss)).clamp(min=-30.0).float()
        return ids.to(tgt_out.device), log_q.to(tgt_out.device)


class TorchStep:
    """The model's step as ``decode`` calls it (numpy in, numpy out)."""

    def __init__(self, model: Seq2Seq, device: torch.device) -> None:
        self.model, self.device = model, device

    def encode(self, src: list[list[int]]) -> tuple[np.ndarray, ...]:
        x = padded(src).to(self.device)
        lengths = torch.tensor([len(s) for s in src])
        return tuple(t.cpu().numpy() for t in self.model.encode(x, lengths))

    def __call__(self, token: np.ndarray, feed: np.ndarray, *rest: np.ndarray) -> tuple[np.ndarray, ...]:
        t = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in (token, feed, *rest)]
        memory, keys, mask, *state = t[2:]
        feed2, new, attn = self.model.step(t[0], tuple(state), t[1], memory, keys, mask)
        out = (torch.log_softmax(self.model.logits(feed2), -1), feed2, attn, *new)
        return tuple(o.cpu().numpy() for o in out)


@torch.no_grad()
def translate(
    model: Seq2Seq, tok: Tokenizer, texts: list[str], device: torch.device, width: int, limit: int
) -> list[str]:
    """Greedy (``width`` 1) or beam translations, 100 sentences a batch."""
    model.eval()
    step, out = TorchStep(model, device), []
    for i in range(0, len(texts), 100):
        src = [tok.encode(t)[: limit - 1] + [EOS] for t in texts[i : i + 100]]
        out.extend(tok.decode(ids) for ids in decode.best(step, src, width, limit, BOS, EOS))  # specials dropped
    model.train()
    return out


def scores(hyps: list[str], refs: list[str]) -> dict:
    chrf, bleu, ter = sacrebleu.metrics.CHRF(), sacrebleu.metrics.BLEU(), sacrebleu.metrics.TER()
    return {
        "chrf": round(chrf.corpus_score(hyps, [refs]).score, 2),
        "bleu": round(bleu.corpus_score(hyps, [refs]).score, 2),
        "ter": round(ter.corpus_score(hyps, [refs]).score, 2),
        "signature": {m: str(x.get_signature()) for m, x in (("chrf", chrf), ("bleu", bleu), ("ter", ter))},
    }


def train_translate(args: argparse.Namespace) -> dict:
    if args.max_steps < 1 or args.time_budget < 0 or not 0 <= args.sentence_share <= 1 or args.negatives < 0:
        raise DataError(
            "--max-steps must be >= 1, --time-budget >= 0 (0: no cap), --sentence-share in [0, 1], --negatives >= 0"
        )
    started = time.time()
    seed_everything(args.seed)
    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "log.txt", "stdout")

    train, phrases, valid, test, described = load_pairs(args)
    for name, part in (("test", test), ("valid", valid)):
        (out / f"{name}.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(part.source, part.target)), "utf-8")
    texts = train.source + train.target + phrases.source + phrases.target
    if args.tokenizer == "sentencepiece":
        tok = Tokenizer("sentencepiece", train_sentencepiece(texts, args.vocab, out / "tokenizer.model"))
    else:
        tok = Tokenizer("chars", chars=char_inventory(texts))
    log(
        f"data {described}: train {len(train)} (+{len(phrases)} phrases), valid {len(valid)}, test {len(test)}; "
        f"{args.tokenizer} vocabulary {tok.vocab_size}"
    )

    every = train + phrases
    limit = args.max_tokens
    src = encode_all(tok, every.source, limit - 1)
    tgt = encode_all(tok, every.target, limit - 1)
    lengths = np.array([len(s) for s in src])
    groups = [np.arange(len(train)), np.arange(len(train), len(every))]
    shares = [args.sentence_share, 1 - args.sentence_share] if len(phrases) else [1.0, 0.0]
    draw = batches(lengths, groups, shares, args.batch, np.random.default_rng(args.seed))

    cfg = S2SConfig(
        tok.vocab_size,
        PAD,
        BOS,
        EOS,
        args.rnn,
        args.attention,
        args.embedding,
        args.hidden,
        args.enc_layers,
        args.dec_layers,
        args.dropout,
    )
    model = Seq2Seq(cfg).to(device)
    sampler = Candidates(tgt, tok.vocab_size, args.negatives, args.seed) if args.softmax == "sampled" else None
    log(f"model {args.rnn} {args.attention}: {sum(p.numel() for p in model.parameters())} parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, min(200, args.max_steps // 10))
    budget_end = started + args.time_budget if args.time_budget else math.inf
    best, best_state, since_best, stopped_by = -1.0, None, 0, "steps"
    curve_steps, curve, val_steps, val_chrf, running = [], [], [], [], 0.0
    planned, step = args.max_steps, 0
    bar = progress_bar()(total=args.max_steps, desc="translate", unit="step")
    model.train()
    while step < planned:
        frac = step / planned
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        rows = next(draw)
        x = padded([src[i] + [EOS] for i in rows]).to(device)
        xl = torch.tensor([len(src[i]) + 1 for i in rows])
        y = padded([tgt[i] for i in rows], prefix=[BOS], suffix=[EOS]).to(device)
        cands = sampler(y[:, 1:]) if sampler is not None else None
        loss, _ = model.loss(x, xl, y[:, :-1], y[:, 1:], args.smoothing, cands)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        bar.update(1)
        if step % 100 == 0:
            curve_steps.append(step)
            curve.append(running)
            bar.set_postfix(loss=f"{running:.3f}")
        if step % args.eval_every == 0 or step == planned:
            chrf = scores(translate(model, tok, valid.source, device, 1, limit), valid.target)["chrf"]
            val_steps.append(step)
            val_chrf.append(chrf)
            improved = chrf > best
            if improved:
                best, since_best = chrf, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
            log(f"step {step}: loss {running:.3f}, valid chrF {chrf:.2f}{' (best)' if improved else ''}")
            if since_best >= args.patience:
                stopped_by = "early_stopping"
                break
        if time.time() > budget_end and planned == args.max_steps:
            planned, stopped_by = step + max(1, step // 20), "time_budget"
            log(f"time budget of {args.time_budget:g} s reached at step {step}: annealing to step {planned}")
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    train_seconds = time.time() - started

    results: dict = {}
    for name, width in (("greedy", 1), (f"beam{args.beam}", args.beam)):
        t0 = time.time()
        hyps = translate(model, tok, test.source, device, width, limit)
        results[name] = {**scores(hyps, test.target), "seconds": round(time.time() - t0, 1)}
        log(f"test {name}: chrF {results[name]['chrf']}, BLEU {results[name]['bleu']}, TER {results[name]['ter']}")
        if width == 1:
            samples = [{"source": s, "reference": r, "greedy": h} for s, r, h in zip(test.source, test.target, hyps)]
        else:
            for sm, h in zip(samples, hyps):
                sm[f"beam{width}"] = h
    copy = scores(test.source, test.target)
    metrics = {
        "task": "translate",
        "data": described,
        "train_pairs": len(train),
        "phrase_pairs": len(phrases),
        "valid_pairs": len(valid),
        "test_pairs": len(test),
        "tokenizer": args.tokenizer,
        "vocab_size": tok.vocab_size,
        "softmax": args.softmax,
        **{k: results[f"beam{args.beam}"][k] for k in ("chrf", "bleu", "ter")},  # the headline: beam, as served
        "early_stopping": decode.STOPPING,
        "greedy": results["greedy"],
        f"beam{args.beam}": results[f"beam{args.beam}"],
        "copy_source": {k: copy[k] for k in ("chrf", "bleu", "ter")},
        "best_valid_chrf": best,
        "steps": step,
        "stopped_by": stopped_by,
        "train_seconds": round(train_seconds, 1),
        "samples": samples[:20],
    }
    config = {
        "task": "translate",
        "model": cfg.to_dict(),
        "tokenizer": args.tokenizer,
        "chars": tok.pieces[4:] if args.tokenizer == "chars" else [],
        "max_tokens": limit,
        "args": {k: v for k, v in vars(args).items() if not callable(v)},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    torch.save({"model": model.state_dict(), "config": config}, out / "checkpoint.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    plot_curves(
        out / "learning_curves.png",
        "step",
        curve_steps,
        [("training loss", "loss", {"train": curve})],
    )
    log(f"trained {step} steps in {train_seconds:.0f} s ({stopped_by}); best valid chrF {best:.2f}")
    log.close()
    return metrics


def load_model(run: Path) -> tuple[Seq2Seq, Tokenizer, dict]:
    """A run's model (CPU, eval mode), its tokenizer and config."""
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = ck["config"]
    model = Seq2Seq(S2SConfig(**cfg["model"]))
    model.load_state_dict(ck["model"])
    model.eval()
    if cfg["tokenizer"] == "sentencepiece":
        tok = Tokenizer("sentencepiece", run / "tokenizer.model")
    else:
        tok = Tokenizer("chars", chars=cfg["chars"])
    return model, tok, cfg
