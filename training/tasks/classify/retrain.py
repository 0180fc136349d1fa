"""``python -m training retrain``: a challenger from the champion and the feedback, gated, maybe promoted.

Reading top to bottom:

1. **When.** The champion is whatever the pointer names (``service.core.store.champion``). A retrain needs at least
   ``--min-new-items`` feedback items (train split) stored since the champion was promoted, and
   ``--cooldown-s`` since that promotion. Otherwise it stops with ``state: skipped``, so a drifting input that
   keeps firing an alert cannot retrain in a loop. ``--force`` skips both checks.
2. **Data.** Training data = the champion's original training file + every feedback item of the train split.
   Holdout = the original test file + every feedback item of the holdout split. The original files are the
   copies stored with the champion in the model store (``data-train.*``, ``data-test.*``, checked against their
   SHA-256), so a retrain needs nothing but the store and the database (a Kubernetes worker has no access to the
   paths of the machine that trained); ``--train``/``--test`` override them, and a champion exported before the
   copies existed falls back to the recorded paths. An item's split was fixed at
   insert (``service.tasks.classify.feedback``), so no holdout item is ever trained on. The challenger's normalisation
   statistics come from this training data, and export records them, so drift is measured against what the
   challenger saw.
3. **Train.** The champion's training settings are reused. By default the challenger is fine-tuned from the
   champion's ``checkpoint.pt`` (warm start, learning rate x ``--lr-factor``, fewer epochs).
   ``--from-scratch`` trains anew. So do a missing checkpoint and a changed architecture, and the report says
   why.
4. **Export** through the same export and parity gate as ``make export``, into the model store.
5. **Gate.** Champion and challenger are scored by ONNX Runtime, as served, on the same holdout, sequence by
   sequence; ``training.tasks.classify.gate`` promotes only a challenger better beyond chance (McNemar's
   paired test, ``--alpha``), by ``--margin``, and no worse on the original test split than
   ``--max-regression``, with the same contract (features, classes). Promotion moves the pointer in one
   transaction. A crash at any step before that leaves the champion and the pointer as they were.
6. **Report.** ``OUT/report.json``, whatever happened, failures included (``state: failed``, the step and the
   error in ``reason``; the command then exits 2).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import numpy as np

from service.core.store.database import add_database_arg
from training import data
from training.tasks.classify.gate import ALPHA, MAX_REGRESSION, decide

STATES = ("skipped", "promoted", "rejected", "failed")


def add_retrain_args(p: argparse.ArgumentParser) -> None:
    add_database_arg(p)
    p.add_argument("--train", default="", help="original training data (default: the champion's)")
    p.add_argument("--test", default="", help="original test data, part of the holdout (default: the champion's)")
    p.add_argument("--out", default="", help="work directory (default runs/retrain-<time>)")
    p.add_argument("--from-scratch", action="store_true", help="do not warm-start from the champion")
    p.add_argument("--freeze-front", action="store_true", help="fine-tune only the RNN, attention and head")
    p.add_argument("--margin", type=float, default=0.0, help="challenger accuracy must be >= champion's + margin")
    p.add_argument("--alpha", type=float, default=ALPHA, help="McNemar's one-sided p must be below this")
    p.add_argument(
        "--max-regression",
        type=float,
        default=MAX_REGRESSION,
        help="the challenger may lose at most this much accuracy on the original test split",
    )
    p.add_argument("--min-new-items", type=int, default=50, help="feedback items since the champion's promotion")
    p.add_argument("--cooldown-s", type=float, default=3600.0, help="seconds since the champion's promotion")
    p.add_argument("--force", action="store_true", help="ignore --min-new-items and --cooldown-s")
    p.add_argument("--lr-factor", type=float, default=0.3, help="fine-tuning learning rate / the champion's")
    p.add_argument("--epochs", type=int, default=0, help="0: the champion's when from scratch, a third to fine-tune")
    p.add_argument("--time-budget", type=float, default=0.0, help="0: the champion's training budget")
    p.add_argument("--quiet", action="store_true")


def correct(artifact_dir: Path, holdout: data.Dataset) -> np.ndarray:
    """Which ``holdout`` sequences an exported artifact gets right, through the serving engine (ORT, CPU)."""
    from service.core.artifact import find_artifact
    from service.core.settings import Settings
    from service.tasks.classify.engine import Engine

    engine = Engine(find_artifact(str(artifact_dir)), Settings(device="cpu", ort_threads=1))
    probs, _, _ = engine.infer(holdout.sequences)
    pred = [engine.classes[i] for i in probs.argmax(axis=1)]
    return np.array([p == t for p, t in zip(pred, holdout.labels)], dtype=bool)


def original_data(args: argparse.Namespace, champ_art, champ_args: dict) -> dict[str, str]:  # noqa: ANN001
    """The original training and test files: ``--train``/``--test``; else the copies stored with the champion
    (their SHA-256 checked); else the paths recorded at training time (champions exported before the copies)."""
    from service.core.artifact import check_file_hashes

    recorded = champ_art.meta.extra.get("training_data", {})
    stored = recorded.get("files", {})
    out = {}
    for split, flag in (("train", args.train), ("test", args.test)):
        if flag:
            out[split] = flag
        elif split in stored:
            path = champ_art.path / stored[split]["file"]
            check_file_hashes(champ_art.path, {stored[split]["file"]: stored[split]["sha256"]})
            out[split] = str(path)
        else:
            out[split] = champ_args.get(f"original_{split}") or recorded[split]
    return out


def write_jsonl(path: Path, sequences: list[np.ndarray], labels: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for s, label in zip(sequences, labels):
            fh.write(json.dumps({"sequence": s.tolist(), "label": label}) + "\n")
    return path


def train_args(
    champion_ckpt: dict,
    args: argparse.Namespace,
    original: dict[str, str],
    train: Path,
    test: Path,
    run: Path,
    warm: Path | None,
) -> argparse.Namespace:
    """The champion's training settings, with this retrain's data, output and schedule."""
    from training.tasks.classify.train import add_train_args

    p = argparse.ArgumentParser()
    add_train_args(p)
    targs = p.parse_args([])
    targs.__dict__.update({k: v for k, v in champion_ckpt["args"].items() if k in targs.__dict__})
    cfg = champion_ckpt.get("model_config")
    if cfg:
        targs.stride, targs.normalisation = str(cfg["stride"]), cfg["normalisation"]  # as resolved for the champion
        # The kernel branch if the champion has one (none from before it existed); a warm start keeps its shape.
        targs.kernel_features = cfg.get("kernel_features", 0)
    targs.train, targs.test, targs.out, targs.quiet = str(train), str(test), str(run), args.quiet
    targs.init_from = str(warm) if warm else ""
    targs.original_train, targs.original_test = str(original["train"]), str(original["test"])  # for the next retrain
    if warm:
        targs.freeze_front = args.freeze_front
        targs.lr = targs.lr * args.lr_factor
        targs.epochs = args.epochs or max(10, targs.epochs // 3)
    elif args.epochs:
        targs.epochs = args.epochs
    if args.time_budget:
        targs.time_budget = args.time_budget
    return targs


def retrain(args: argparse.Namespace) -> dict:
    """Run the steps above; write and return the report. Any failure also writes it (``state: failed``), then
    raises ``ValueError`` naming the step (the CLI's exit status 2)."""
    out = Path(args.out or f"runs/retrain-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"started_at": time.time()}
    step = ["champion"]  # where a failure happened, for the report

    def finish(state: str, **fields: object) -> dict:
        report.update(state=state, finished_at=time.time(), **fields)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        if not args.quiet:
            print(f"retrain: {state} ({out / 'report.json'})")
        return report

    try:
        return _retrain(args, out, report, finish, step)
    except Exception as e:  # noqa: BLE001 - every failure is reported; the champion and the pointer stay
        finish("failed", step=step[0], reason=f"{step[0]}: {type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise ValueError(f"retrain failed at step {step[0]} ({out / 'report.json'}): {type(e).__name__}: {e}") from e


def _retrain(args: argparse.Namespace, out: Path, report: dict, finish, step: list[str]) -> dict:  # noqa: ANN001
    import torch

    from service.core.artifact import find_artifact, save_to_store
    from service.core.store.champion import ChampionPointer
    from service.tasks.classify.feedback import open_store
    from training.tasks.classify.export import export_run
    from training.tasks.classify.train import ArchitectureChanged, train

    pointer = ChampionPointer(args.data_dir)
    champion = pointer.get()
    if champion is None:
        raise ValueError(f"no champion promoted in {args.data_dir} (python -m export.promote REF)")
    report["champion"] = {"ref": champion.ref, "version": champion.version}
    champ_art = find_artifact(champion.ref)
    store = open_store(args.data_dir)
    items = list(store.items())
    new = [i for i in items if i.split == "train" and i.created_at > champion.promoted_at]
    n_holdout = sum(i.split == "holdout" for i in items)
    report["feedback"] = {"train": len(items) - n_holdout, "holdout": n_holdout, "new_train": len(new)}
    if not args.force:
        if len(new) < args.min_new_items:
            return finish("skipped", reason=f"{len(new)} new feedback items, need {args.min_new_items}")
        waited = time.time() - champion.promoted_at
        if waited < args.cooldown_s:
            return finish("skipped", reason=f"champion promoted {waited:.0f} s ago, cooldown {args.cooldown_s:.0f} s")

    ckpt_path = champ_art.path / "checkpoint.pt"
    champion_ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True) if ckpt_path.exists() else None
    # The original data, through every generation (a retrained champion's own train/test files already hold
    # feedback: reading those again would count each feedback item twice).
    step[0] = "data"
    original = original_data(args, champ_art, champion_ckpt["args"] if champion_ckpt else {})
    report["original_data"] = original
    original_train, original_test = data.load(original["train"]), data.load(original["test"])
    fb_train = [i for i in items if i.split == "train"]
    fb_holdout = [i for i in items if i.split == "holdout"]
    train_file = write_jsonl(
        out / "train.jsonl",
        original_train.sequences + [i.sequence for i in fb_train],
        original_train.labels + [i.label for i in fb_train],
    )
    holdout = data.Dataset(
        original_test.sequences + [i.sequence for i in fb_holdout], original_test.labels + [i.label for i in fb_holdout]
    )
    holdout_file = write_jsonl(out / "holdout.jsonl", holdout.sequences, holdout.labels)

    warm = None if args.from_scratch or champion_ckpt is None else ckpt_path
    if champion_ckpt is None:  # exported before checkpoints were stored: the default settings, from scratch
        champion_ckpt = {"args": {}}
        report["mode"] = f"from scratch ({ckpt_path.name} not stored with the champion; default settings)"
    elif args.from_scratch:
        report["mode"] = "from scratch (--from-scratch)"
    else:
        report["mode"] = "fine-tune from the champion" + (" (front end frozen)" if args.freeze_front else "")
    run = out / "run"
    step[0] = "train"
    try:
        metrics = train(train_args(champion_ckpt, args, original, train_file, holdout_file, run, warm))
    except ArchitectureChanged as e:
        report["mode"] = f"from scratch ({e})"
        metrics = train(train_args(champion_ckpt, args, original, train_file, holdout_file, run, None))
    artifact = out / "artifact"
    step[0] = "export"
    meta = export_run(run, artifact, str(holdout_file))  # the parity gate may refuse: reported as failed
    step[0] = "store"
    tag = save_to_store(artifact)
    step[0] = "gate"
    right = {"champion": correct(champ_art.path, holdout), "challenger": correct(artifact, holdout)}
    verdict = decide(right["champion"], right["challenger"], len(original_test), args.margin, args.alpha,
                     args.max_regression)  # fmt: skip
    report.update(
        challenger={"ref": tag, "version": meta["model_version"], "train_seconds": metrics["train_seconds"]},
        holdout={"sequences": len(holdout), "feedback": len(fb_holdout), "original_test": len(original_test)},
        accuracy={k: verdict["holdout"][k] for k in right},  # the gate's figures, as before the gate existed
        margin=args.margin,
        gate={k: v for k, v in verdict.items() if k not in ("promote", "reason")},
    )
    same_contract = (meta["feature_dim"], meta["classes"]) == (champ_art.meta.feature_dim, champ_art.meta.classes)
    if not same_contract:
        report["gate"]["rule"] = "contract"
        return finish("rejected", reason="the challenger's contract (features, classes) differs: promote by hand")
    if not verdict["promote"]:
        return finish("rejected", reason=verdict["reason"])
    step[0] = "promote"
    promoted = pointer.set(tag, meta["model_version"])
    return finish("promoted", promoted_at=promoted.promoted_at, reason=verdict["reason"])
