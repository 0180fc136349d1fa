"""Accuracy suite: ``python -m training eval`` trains with the defaults on UCR/UEA datasets and writes a report.

For each dataset and seed it runs exactly what ``python -m training train`` runs with no options but the data
(and ``--seed``), then writes ``docs/accuracy.md`` (median over seeds and the spread, beside published figures)
and ``docs/accuracy.json`` (every run). The data ships in ``data/`` (see data/ucr/README.md for citations).
Nothing here is tuned per dataset: the suite exists to catch defaults that only work on one of them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training import data
from training.tasks.classify.train import add_train_args, train

DATA = Path(__file__).resolve().parents[3] / "data"  # the repository's data/
DATASETS = [
    "PigCVP",
    "Coffee",
    "ArrowHead",
    "OSULeaf",
    "ACSF1",
    "GunPoint",
    "BasicMotions",
    "JapaneseVowels",
    "ItalyPowerDemand",
]

# Published test accuracy. ROCKET: Dempster et al. 2020, mean of its 10 runs on the archive's split
# (results/results_ucr.csv of github.com/angus924/rocket; BasicMotions from the multivariate study);
# FCN/ResNet: Wang et al. 2017 (W), Fawaz et al. 2019 bake-off (F). None: the cited studies did not run it.
PUBLISHED = {
    "PigCVP": {"rocket": 0.934, "fcn": None, "resnet": None},
    "ACSF1": {"rocket": 0.886, "fcn": None, "resnet": None},
    "OSULeaf": {"rocket": 0.941, "fcn": 0.988, "resnet": 0.979, "source": "W"},
    "Coffee": {"rocket": 1.00, "fcn": 1.00, "resnet": 1.00, "source": "F"},
    "ArrowHead": {"rocket": 0.814, "fcn": 0.843, "resnet": 0.845, "source": "F"},
    "GunPoint": {"rocket": 1.00, "fcn": 1.00, "resnet": 0.993, "source": "W"},
    "BasicMotions": {"rocket": 1.00, "fcn": None, "resnet": None},
    "JapaneseVowels": {"rocket": None, "fcn": 0.993, "resnet": 0.992, "source": "F"},
    "ItalyPowerDemand": {"rocket": 0.970, "fcn": 0.970, "resnet": 0.960, "source": "W"},
}
ROCKET_MARGIN = 0.03  # every set must come within this of ROCKET's published accuracy (issue 22)
# Earlier, stricter targets stand where they are above ROCKET - margin; JapaneseVowels has no ROCKET figure.
EARLIER_TARGETS = {"ACSF1": 0.89, "OSULeaf": 0.94, "ArrowHead": 0.82, "GunPoint": 0.98, "JapaneseVowels": 0.98}
TARGETS = {
    name: round(max(EARLIER_TARGETS.get(name, 0.0), (pub["rocket"] or 0.0) - ROCKET_MARGIN), 3)
    for name, pub in PUBLISHED.items()
    if pub["rocket"] is not None or name in EARLIER_TARGETS
}
NOTES_HEADING = "## Notes"  # the report keeps everything from this heading on (hand-written findings)


def dataset_files(name: str) -> tuple[Path, Path]:
    folder = DATA / name if (DATA / name).is_dir() else DATA / "ucr"
    return folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated names under data/")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; the report gives the median")
    p.add_argument("--out", default="docs/accuracy.md", help="markdown report (JSON beside it, .json)")
    p.add_argument("--time-budget", type=float, default=None, help="override the training default (CI: short)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (passed to training)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument(
        "--epoch-timing",
        default=None,
        metavar="DEVICES",
        help="instead of the accuracy runs: seconds per epoch on each device (e.g. cpu,cuda) with the "
        "default model, written to docs/epoch_timing.json and shown in the report",
    )
    p.add_argument("--timing-epochs", type=int, default=6, help="epochs per timing run (the first is warm-up)")


def describe(name: str) -> dict:
    train_path, test_path = dataset_files(name)
    tr, te = data.load(train_path), data.load(test_path)
    lengths = np.concatenate([tr.lengths, te.lengths])
    return {
        "dataset": name,
        "train": len(tr),
        "test": len(te),
        "channels": tr.feature_dim,
        "classes": len(tr.classes),
        "length_min": int(lengths.min()),
        "length_max": int(lengths.max()),
    }


def train_defaults(name: str, out: Path, threads: int, *flags: str) -> dict:
    """``python -m training train`` on a shipped dataset with the CLI's defaults plus ``flags``; its metrics."""
    train_path, test_path = dataset_files(name)
    p = argparse.ArgumentParser()
    add_train_args(p)
    argv = ["--train", str(train_path), "--test", str(test_path), "--out", str(out), "--quiet"]
    return train(p.parse_args([*argv, "--threads", str(threads), *flags]))


def run_one(name: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    """One training run with the CLI's defaults; returns its metrics without the per-epoch history."""
    flags = ["--seed", str(seed), "--device", args.device]
    if args.time_budget is not None:
        flags += ["--time-budget", str(args.time_budget)]
    m = train_defaults(name, workdir / f"{name}_{seed}", args.threads, *flags)
    return {k: v for k, v in m.items() if k != "history"} | {"seed": seed}


def epoch_timing(args: argparse.Namespace, names: list[str]) -> dict:
    """Median seconds per training epoch (after the first) with the default model, per dataset and device."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="seqserve-timing-") as tmp:
        for n in names:
            info = describe(n)
            for device in args.epoch_timing.split(","):
                flags = ["--device", device, "--epochs", str(args.timing_epochs), "--time-budget", "1e9"]
                m = train_defaults(n, Path(tmp) / f"{n}_{device}", args.threads, *flags)
                secs = [h["seconds"] for h in m["history"][1:]] or [m["history"][0]["seconds"]]
                rows.append(
                    {
                        **info,
                        "device": m["device"],
                        "device_name": _device_name(m["device"]),
                        "threads": torch.get_num_threads(),
                        "batch_size": m["batch_size"],
                        "epoch_seconds": statistics.median(secs),
                        "test_accuracy": m["test_accuracy"],
                    }
                )
                print(f"{n} {device}: {rows[-1]['epoch_seconds']:.3f} s/epoch", file=sys.stderr)
    return {
        "written": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "epochs": args.timing_epochs,
        "host": platform.node(),
        "rows": rows,
    }


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def summarise(info: dict, runs: list[dict]) -> dict:
    acc = [r["test_accuracy"] for r in runs]
    f1 = [r["test_macro_f1"] for r in runs]
    secs = [r["train_seconds"] for r in runs]
    name = info["dataset"]
    row = {
        **info,
        "seeds": [r["seed"] for r in runs],
        "accuracy_median": statistics.median(acc),
        "accuracy_min": min(acc),
        "accuracy_max": max(acc),
        "macro_f1_median": statistics.median(f1),
        "train_seconds_median": statistics.median(secs),
        "epochs": [r["epochs"] for r in runs],
        "normalisation": runs[0]["normalisation"],
        "mixup": [bool(r.get("mixup")) for r in runs],
        "published": PUBLISHED.get(name, {}),
        "target": TARGETS.get(name),
    }
    row["target_met"] = None if row["target"] is None else row["accuracy_median"] >= row["target"]
    return row


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def write_report(rows: list[dict], runs: list[dict], path: Path, env: dict) -> None:
    lines = [
        "# Accuracy suite (`make eval`)",
        "",
        f"Datasets in this report: {len(rows)} (written after each dataset).",
        "",
        "Each dataset is trained with the defaults of `python -m training train` (nothing set but the data and",
        f"the seed), {env['machine']}. Accuracy and macro-F1 on the archive's test split: median over seeds",
        "(min..max). Published figures: ROCKET (Dempster et al. 2020), FCN and ResNet from Wang et al. 2017 (W)",
        "or the Fawaz et al. 2019 bake-off (F); '-' where the cited study did not run the dataset. Target:",
        f"ROCKET's accuracy - {ROCKET_MARGIN} (or an earlier, stricter target).",
        "",
        "| dataset | train/test | channels | lengths | classes | accuracy (min..max) | macro-F1 | train s | "
        "epochs | norm | mixup | ROCKET | FCN | ResNet | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pub = r["published"]
        src = f" ({pub['source']})" if pub.get("source") else ""
        target = "-" if r["target"] is None else f">= {r['target']:.2f} {'met' if r['target_met'] else 'MISSED'}"
        lengths = (
            f"{r['length_min']}" if r["length_min"] == r["length_max"] else f"{r['length_min']}..{r['length_max']}"
        )
        lines.append(
            f"| {r['dataset']} | {r['train']}/{r['test']} | {r['channels']} | {lengths} | {r['classes']} | "
            f"**{r['accuracy_median']:.3f}** ({r['accuracy_min']:.3f}..{r['accuracy_max']:.3f}) | "
            f"{r['macro_f1_median']:.3f} | {r['train_seconds_median']:.0f} | "
            f"{'/'.join(str(e) for e in r['epochs'])} | {r['normalisation']} | "
            f"{'/'.join('yes' if m else 'no' for m in r['mixup'])} | {_fmt(pub.get('rocket'))} | "
            f"{_fmt(pub.get('fcn'))}{src if pub.get('fcn') else ''} | {_fmt(pub.get('resnet'))} | {target} |"
        )
    lines += [
        "",
        f"Seeds {env['seeds']}; torch {env['torch']}; device {env['device']}; "
        f"time budget {env['time_budget']}; written {env['written']}.",
        "",
    ]
    timing_path = path.with_name("epoch_timing.json")
    if timing_path.exists():
        t = json.loads(timing_path.read_text())
        lines += [
            "## Seconds per training epoch, CPU vs CUDA",
            "",
            f"Default model, median of epochs 2..{t['epochs']}, torch {t['torch']}, measured {t['written']} "
            "with `python -m training eval --epoch-timing cpu,cuda` (docs/epoch_timing.json).",
            "",
            "| dataset | lengths | train | device | s/epoch |",
            "|---|---|---|---|---|",
        ]
        for r in t["rows"]:
            lines.append(
                f"| {r['dataset']} | {r['length_max']} | {r['train']} | {r['device_name']} | {r['epoch_seconds']:.3f} |"
            )
        lines.append("")
    if path.exists() and NOTES_HEADING in path.read_text():
        lines.append(path.read_text()[path.read_text().index(NOTES_HEADING) :].rstrip() + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps({"env": env, "datasets": rows, "runs": runs}, indent=2))


def evaluate(args: argparse.Namespace) -> list[dict]:
    names = [n for n in args.datasets.split(",") if n]
    seeds = [int(s) for s in str(args.seeds).split(",") if s != ""]
    for n in names:
        if not all(p.exists() for p in dataset_files(n)):
            raise data.DataError(f"dataset {n!r}: {dataset_files(n)[0]} not found (data/ or data/ucr/)")
    if args.epoch_timing:
        timing = epoch_timing(args, names)
        target = Path(args.out).with_name("epoch_timing.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(timing, indent=2))
        print(f"wrote {target}", file=sys.stderr)
        return timing["rows"]
    rows, all_runs = [], []
    env = {
        "machine": f"{torch.get_num_threads()} torch threads on {platform.processor() or platform.machine()}",
        "seeds": seeds,
        "torch": torch.__version__,
        "device": "",
        "time_budget": args.time_budget or "none (the schedule's --epochs)",
        "written": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory(prefix="seqserve-eval-") as tmp:
        for n in names:
            info = describe(n)
            runs = []
            for seed in seeds:
                t0 = time.perf_counter()
                r = run_one(n, seed, args, Path(tmp))
                runs.append({"dataset": n, **r})
                print(
                    f"{n} seed {seed}: accuracy {r['test_accuracy']:.4f} macro-F1 {r['test_macro_f1']:.4f} "
                    f"{r['epochs']} epochs {time.perf_counter() - t0:.0f}s",
                    file=sys.stderr,
                )
            rows.append(summarise(info, runs))
            all_runs += runs
            env["device"] = all_runs[0]["device"]
            write_report(rows, all_runs, Path(args.out), env)  # after every dataset: a long run can be cut short
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}", file=sys.stderr)
    return rows
