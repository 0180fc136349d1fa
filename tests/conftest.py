"""Shared fixtures: a small model trained in this session, its artifact in a temporary model store, and a real
``bentoml serve`` process on a free 127.0.0.1 port (stopped by PID at the end)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from loadtest.procs import free_port, start_bentoml, stop_process

ROOT = Path(__file__).resolve().parents[1]
JV_TRAIN = ROOT / "data/JapaneseVowels/JapaneseVowels_TRAIN.ts"
JV_TEST = ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts"
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# Every process the tests start gets an empty service database (feedback, champion pointer) unless a test
# names one: a champion promoted in the checkout's own .seqserve/ must not decide what a test serves.
os.environ["SEQSERVE_DATA_DIR"] = tempfile.mkdtemp(prefix="seqserve-test-data-")


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bentoml_home")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick real training run on JapaneseVowels (seconds): 1-layer BiGRU, 8 epochs."""
    from training.__main__ import main

    out = tmp_path_factory.mktemp("run")
    rc = main(
        [
            "train",
            "--train",
            str(JV_TRAIN),
            "--test",
            str(JV_TEST),
            "--out",
            str(out),
            "--hidden",
            "32",
            "--layers",
            "1",
            "--epochs",
            "8",
            "--quiet",
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def artifact(small_run: Path, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Export through the real CLI into a temporary BentoML model store."""
    out = tmp_path_factory.mktemp("artifact")
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    proc = subprocess.run(
        [sys.executable, "-m", "export", "--run", str(small_run), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stored as seqclassifier:" in proc.stderr
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session server's SEQSERVE_DATA_DIR (its feedback store)."""
    return tmp_path_factory.mktemp("data_dir")


@pytest.fixture(scope="session")
def server(artifact: Path, bentoml_home: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real ``bentoml serve`` on 127.0.0.1 serving the artifact's tag (SEQSERVE_MODEL) from the temporary store,
    accepting sequences of up to 64 steps."""
    log = tmp_path_factory.mktemp("logs") / "bentoml.log"
    # SEQSERVE_MAX_LENGTH: the serve-time override of the artifact's (generous) limit, kept small to test it.
    env = {"BENTOML_HOME": str(bentoml_home), "SEQSERVE_MAX_LATENCY_MS": "20000", "SEQSERVE_MAX_LENGTH": "64"}
    env["SEQSERVE_BODY_TIMEOUT_S"] = "3"  # a trickling client is cut off after 3 s (tests/test_hostile.py)
    env["SEQSERVE_DATA_DIR"] = str(data_dir)
    env["SEQSERVE_MODEL"] = "seqclassifier:" + json.loads((artifact / "metadata.json").read_text())["model_version"]
    proc, url = start_bentoml(ROOT, env, log)
    yield url
    stop_process(proc)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server (Debian's ``postgresql``; .ci/run installs it) on 127.0.0.1, in a temporary
    cluster, stopped at the end. Outside CI, a machine without it skips these tests and says why."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing in CI: .ci/run installs the Debian package postgresql")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql, or run .ci/run")
    base = Path(tempfile.mkdtemp(prefix="seqserve-pg-"))  # not under pytest's root-only temp directory
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    data, sock = base / "data", base / "sock"
    subprocess.run([*as_user, "mkdir", "-p", str(sock)], check=True)
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True
    )
    port = free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=on -c synchronous_commit=on"
    log = base / "server.log"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(log), "-w", "start"], check=True)
    try:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE seqserve")
        yield f"postgresql://postgres@127.0.0.1:{port}/seqserve"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a service database lives, once per backend: a data directory, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "data")
    import psycopg

    url = request.getfixturevalue("postgres_url")
    name = f"t{abs(hash(str(tmp_path))) % 10**12}"
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def train_and_export():
    """``train_and_export(run_dir, out, *train_args)``: a quick JapaneseVowels model (``train_args``: hidden,
    epochs, seed, ...) exported to ``out`` (not stored); returns ``out``."""
    return _train_and_export


def _train_and_export(run_dir: Path, out: Path, *train_args: str) -> Path:
    from training.__main__ import main

    base = ["train", "--train", str(JV_TRAIN), "--test", str(JV_TEST), "--out", str(run_dir), "--quiet"]
    assert main([*base, *train_args]) == 0
    cmd = [sys.executable, "-m", "export", "--run", str(run_dir), "--out", str(out), "--no-store"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# --- language models (issue 12) ----------------------------------------------------------------------------------
SHAKESPEARE = ROOT / "data/text/tinyshakespeare.txt"
POEMS = ROOT / "data/text/tang_poems.txt"


def train_tiny_lm(out: Path, text: Path, *extra: str) -> Path:
    """A language model trained for a few steps (seconds): real code, tiny sizes."""
    from training.__main__ import main

    args = ["lm", "--text", str(text), "--out", str(out), "--hidden", "48", "--embedding", "16"]
    args += ["--max-steps", "30", "--batch", "8", "--bptt", "32", "--eval-every", "1e9", *extra]
    assert main(args) == 0
    return out


@pytest.fixture(scope="session")
def lm_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-layer LSTM on Tiny Shakespeare, exported (step graph, parity-gated)."""
    from training.tasks.generate.export import export_lm_run

    run = train_tiny_lm(tmp_path_factory.mktemp("lm_run"), SHAKESPEARE)
    out = tmp_path_factory.mktemp("lm_artifact")
    export_lm_run(run, out)
    return out


@pytest.fixture(scope="session")
def poem_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 1-layer GRU on 3,000 Tang poems (one a line: <bos>/<eos>, forms), exported."""
    from training.tasks.generate.export import export_lm_run

    text = tmp_path_factory.mktemp("poems") / "poems.txt"
    text.write_text("\n".join(POEMS.read_text(encoding="utf-8").splitlines()[:3000]) + "\n", encoding="utf-8")
    run = train_tiny_lm(
        tmp_path_factory.mktemp("poem_run"), text, "--documents", "lines", "--rnn", "gru", "--layers", "1"
    )
    out = tmp_path_factory.mktemp("poem_artifact")
    export_lm_run(run, out)
    return out


# --- translation (issue 25) --------------------------------------------------------------------------------------
def tiny_pairs(out: Path) -> Path:
    """600 real sentence pairs (the Ding dictionary when installed, else two pairs varied) as ``out/pairs.tsv``."""
    from training.tasks.translate.data import DING, read_ding

    if DING.exists():
        sentences, _ = read_ding()
        pairs = list(zip(sentences.source, sentences.target))[:600]
    else:
        pairs = [("Wie die Mutter, so die Tochter.", "Like mother, like daughter."), ("Es gibt sie.", "They exist.")]
        pairs = [(f"{s} {i}", f"{t} {i}") for i in range(300) for s, t in pairs][:600]
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return out / "pairs.tsv"


def train_tiny_translator(out: Path, *extra: str) -> Path:
    """A translator trained for a few steps (seconds) on ``tiny_pairs``: real code, tiny sizes. Returns the run."""
    import argparse

    from training.tasks.translate.train import add_translate_args, train_translate

    tiny_pairs(out)
    p = argparse.ArgumentParser()
    add_translate_args(p)
    args = p.parse_args(
        ["--out", str(out / "run"), "--train", str(out / "pairs.tsv"), "--test-size", "40", "--valid-size", "20",
         "--vocab", "300", "--hidden", "32", "--embedding", "32", "--max-steps", "40", "--eval-every", "20",
         "--max-tokens", "24", "--batch", "16", *extra]
    )  # fmt: skip
    train_translate(args)
    return out / "run"


@pytest.fixture(scope="session")
def translate_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_translator(tmp_path_factory.mktemp("translate"))


@pytest.fixture(scope="session")
def translate_artifact(translate_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny translator exported (encoder + step graphs, parity-gated)."""
    from training.tasks.translate.export import export_translate_run

    out = tmp_path_factory.mktemp("translate_artifact")
    export_translate_run(translate_run, out)
    return out


# --- text classification (issue 28) ------------------------------------------------------------------------------
def train_tiny_textclf(out: Path, *extra: str) -> Path:
    """A language model pre-trained for a few steps on the vader text, then a classifier fine-tuned from it on 10%
    of the movie sentences (seconds): real code, tiny sizes. Returns the classifier's run."""
    from training.__main__ import main

    lm = ["textlm", "--out", str(out / "lm"), "--vocab", "500", "--hidden", "32", "--embedding", "16"]
    assert main([*lm, "--max-steps", "20", "--batch", "8", "--bptt", "16"]) == 0
    clf = ["textclf", "--pretrained", str(out / "lm"), "--train", "movie", "--out", str(out / "run")]
    ulmfit = ["--unfreeze", "gradual", "--discriminative", "2.6"]  # ULMFiT's schedule (not the default)
    assert main([*clf, "--labels", "0.1", "--few-labels", "0", "--epochs", "2", *ulmfit, *extra]) == 0
    return out / "run"


@pytest.fixture(scope="session")
def textclf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_textclf(tmp_path_factory.mktemp("textclf"))


@pytest.fixture(scope="session")
def textclf_artifact(textclf_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny text classifier exported (graph + tokenizer, parity-gated)."""
    from training.tasks.textclf.export import export_textclf_run

    out = tmp_path_factory.mktemp("textclf_artifact")
    export_textclf_run(textclf_run, out)
    return out
