"""Feedback (issue 10): the durable store, ``POST /feedback`` on a real server, the JSONL export, and a kill -9."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtest.procs import kill_tree, start_bentoml
from service.core.artifact import ModelNotFound
from service.tasks.classify.feedback import StoreFull, assign_split, open_store
from training import data

ROOT = Path(__file__).resolve().parents[1]
JV_TEST = ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts"


def seqs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(1, 30)), 12)).astype(np.float32) for _ in range(n)]


def test_store_is_durable_by_construction(database: str) -> None:
    store = open_store(database)
    if store.db.dialect == "sqlite":
        assert store.durability == {"journal_mode": "wal", "synchronous": "FULL", "busy_timeout_ms": 10_000}
    else:
        assert store.durability == {"fsync": "on", "synchronous_commit": "on"}


def test_items_keep_their_split_and_values(database: str) -> None:
    store = open_store(database, holdout=0.2)
    batch = seqs(400)
    stored = store.add([(s, str(i % 9 + 1)) for i, s in enumerate(batch)], "v1")
    assert len({s.id for s in stored}) == 400
    assert all(s.split == assign_split(s.id, 0.2) for s in stored)
    assert 0.12 < sum(s.split == "holdout" for s in stored) / 400 < 0.28
    store.close()
    again = open_store(database, holdout=0.9)  # a new holdout share applies to new items only
    by_id = {i.id: i for i in again.items()}
    for s, seq in zip(stored, batch):
        assert by_id[s.id].split == s.split and by_id[s.id].label == s.label and by_id[s.id].model_version == "v1"
        np.testing.assert_array_equal(by_id[s.id].sequence, seq)
    n_holdout = sum(s.split == "holdout" for s in stored)
    assert again.counts() == {"train": 400 - n_holdout, "holdout": n_holdout}
    assert {i.id for i in again.items("holdout")} == {s.id for s in stored if s.split == "holdout"}


def test_a_full_store_refuses_the_whole_request(database: str) -> None:
    store = open_store(database, max_items=5)
    store.add([(s, "1") for s in seqs(3)])
    with pytest.raises(StoreFull, match="limit is 5"):
        store.add([(s, "1") for s in seqs(3)])
    assert sum(store.counts().values()) == 3  # nothing of the refused request was stored


def _writer(path: str, k: int) -> None:
    store = open_store(path)
    for s in seqs(40, seed=k):
        store.add([(s, "2")])  # one transaction each: the two processes interleave


def test_several_processes_write_to_one_store(database: str) -> None:
    open_store(database)  # the schema first
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(database, k)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(open_store(database).counts().values()) == 80


def test_export_writes_training_jsonl(database: str, tmp_path: Path) -> None:
    from training.__main__ import main

    test = data.load(JV_TEST)
    store = open_store(database)
    store.add(list(zip(test.sequences[:30], test.labels[:30])))
    out = tmp_path / "fb.jsonl"
    assert main(["feedback", "export", "--out", str(out), "--data-dir", database]) == 0
    back = data.load(out)
    assert back.labels == test.labels[:30]
    for a, b in zip(back.sequences, test.sequences[:30]):
        np.testing.assert_array_equal(a, b)
    assert main(["feedback", "export", "--out", str(out), "--data-dir", str(tmp_path / "none")]) == 2


@pytest.mark.integration
def test_feedback_route_stores_what_it_acknowledges(server: str, data_dir: Path) -> None:
    test = data.load(JV_TEST)
    items = [{"sequence": s.tolist(), "label": lab} for s, lab in zip(test.sequences[:5], test.labels[:5])]
    items[0]["label"] = int(items[0]["label"])  # numeric class names may come as numbers
    r = httpx.post(f"{server}/feedback", json={"items": items}, timeout=60)
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["accepted"] == 5 and len(ack["ids"]) == 5 and set(ack["splits"]) <= {"train", "holdout"}
    stored = {i.id: i for i in open_store(data_dir).items()}
    for item_id, split, seq, label in zip(ack["ids"], ack["splits"], test.sequences, test.labels):
        assert stored[item_id].split == split and stored[item_id].label == label
        np.testing.assert_array_equal(stored[item_id].sequence, seq)
    metrics = httpx.get(f"{server}/metrics").text.splitlines()
    counted = [float(m.rsplit(" ", 1)[1]) for m in metrics if m.startswith("seqserve_feedback_items_total{")]
    assert sum(counted) >= 5
    assert "/feedback" in httpx.get(f"{server}/docs.json").json()["paths"]


GOOD = [[0.1] * 12] * 4
LONG = [[0.1] * 12] * 65
BAD_FEEDBACK = [
    ({"items": [{"sequence": GOOD, "label": "cat"}]}, "items[0].label: 'cat' is not a class of this model (one of: 1,"),
    (
        {"items": [{"sequence": GOOD, "label": "1"}, {"sequence": [[0.1] * 13], "label": "1"}]},
        "items[1].sequence[0]: 13 features, the model expects 12",
    ),
    ({"items": [{"sequence": GOOD}]}, "items[0]: must be an object with 'sequence' and 'label'"),
    ({"items": []}, "items: 0 items, must be 1..64"),
    ({"items": [{"sequence": LONG, "label": "1"}]}, "items[0].sequence: 65 time steps, the model accepts at most 64"),
    ({"items": [{"sequence": GOOD, "label": True}]}, "items[0].label: True is not a class"),
]


@pytest.mark.integration
@pytest.mark.parametrize("body, needle", BAD_FEEDBACK, ids=[n[:30] for _, n in BAD_FEEDBACK])
def test_bad_feedback_is_a_clear_400_and_stores_nothing(server: str, data_dir: Path, body: dict, needle: str) -> None:
    before = sum(open_store(data_dir).counts().values())
    r = httpx.post(f"{server}/feedback", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert needle in json.dumps(r.json()), r.text
    assert sum(open_store(data_dir).counts().values()) == before


@pytest.mark.integration
def test_acknowledged_feedback_survives_kill_9(artifact: Path, tmp_path: Path, database: str) -> None:
    """Requests keep coming; the server is killed with SIGKILL right after a 2xx; every acknowledged item is there.
    Once per backend: the SQLite file, and PostgreSQL (SEQSERVE_DATABASE_URL)."""
    where = "SEQSERVE_DATABASE_URL" if database.startswith("postgresql://") else "SEQSERVE_DATA_DIR"
    env = {"SEQSERVE_MODEL": str(artifact), where: database, "SEQSERVE_WORKERS": "2"}
    env["BENTOML_HOME"] = str(tmp_path / "home")
    proc, url = start_bentoml(ROOT, env, tmp_path / "log.txt")
    acked: list[str] = []
    enough = threading.Event()

    def send(k: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(1000):
                body = {"items": [{"sequence": s.tolist(), "label": "3"} for s in seqs(3, seed=1000 * k + i)]}
                try:
                    r = client.post(f"{url}/feedback", json=body)
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    acked.extend(r.json()["ids"])
                    if len(acked) >= 120:
                        enough.set()

    senders = [threading.Thread(target=send, args=(k,)) for k in range(4)]
    for t in senders:
        t.start()
    try:
        assert enough.wait(120), "no feedback acknowledged"
    finally:
        kill_tree(proc)  # the whole server: arbiter and every worker at once, no clean shutdown
        proc.wait(30)
        for t in senders:
            t.join(60)
    ids = {i.id for i in open_store(database).items()}
    assert len(acked) >= 120 and set(acked) <= ids


def test_jobs_coalesce_and_are_claimed_once(database: str) -> None:
    from service.core.store.jobs import JobQueue

    q = JobQueue(database)
    assert q.latest() is None and q.claim() is None
    job, new = q.enqueue("alert")
    again, new2 = q.enqueue("alert")  # an alert that keeps firing: still one job
    assert new and not new2 and again.id == job.id and job.state == "queued"
    other = JobQueue(database)  # another process/pod: the same database
    claimed = other.claim()
    assert claimed is not None and claimed.id == job.id and claimed.state == "running" and claimed.started_at
    assert q.claim() is None  # nobody else gets it
    assert q.enqueue("api")[0].id == job.id  # still running: coalesced
    done = q.finish(job.id, "rejected", "not better", {"accuracy": {"champion": 0.9}})
    assert other.latest() == done and done.report == {"accuracy": {"champion": 0.9}}
    nxt, new3 = q.enqueue("api")
    assert new3 and nxt.id != job.id and q.latest().id == nxt.id
    stale = q.claim(stale_after_s=0)
    assert stale is not None and stale.id == nxt.id
    time.sleep(0.01)
    assert q.claim(stale_after_s=0) is None and q.get(nxt.id).state == "failed"  # its trainer died
    with pytest.raises(ValueError):
        q.finish(nxt.id, "running")


@pytest.mark.integration
def test_admin_routes_are_off_without_a_token(server: str) -> None:
    for method, path in (("POST", "/admin/retrain"), ("GET", "/admin/retrain"), ("POST", "/admin/reload")):
        assert httpx.request(method, f"{server}{path}", headers={"Authorization": "Bearer x"}).status_code == 404


def test_champion_pointer_moves_atomically(database: str) -> None:
    from service.core.store.champion import ChampionPointer, served_ref

    with pytest.raises(ModelNotFound, match="no model to serve"):
        served_ref("", database)
    pointer = ChampionPointer(database)
    assert pointer.get() is None
    first = pointer.set("seqclassifier:a", "a")
    assert ChampionPointer(database).get() == first
    second = pointer.set("/models/b", "b")
    assert ChampionPointer(database).get() == second and second.promoted_at >= first.promoted_at
    assert served_ref("", database) == ("/models/b", "champion")
    assert served_ref("seqclassifier:x", database) == ("seqclassifier:x", "SEQSERVE_MODEL")
