"""The artifact store: atomic writes, manifests, verification, stages, concurrency, remote paths."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import threading
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from alambic import store as store_mod
from alambic.errors import StoreError
from alambic.fingerprint import stable_hash
from alambic.paths import UnsafePathError
from alambic.store import Manifest, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "artifacts", cache_dir=tmp_path / "cache")


def scratch_entries(directory: Path) -> list[str]:
    """Every leftover temporary entry below `directory` (the store hides them, so look on disk)."""
    return [str(p) for p in directory.rglob("*") if ".tmp-" in p.name]


def build_model(tmp: Path, text: str = "weights") -> dict:
    (tmp / "model.bin").write_text(text)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "config.json").write_text('{"layers": 4}')
    return {"text": text}


# -- atomic writes ------------------------------------------------------------------------------


def test_write_replaces_content_and_leaves_no_tmp_file(store: Store, tmp_path: Path) -> None:
    store.write_text("run/notes.txt", "first")
    store.write_text("run/notes.txt", "second")
    store.write_json("run/data.json", {"b": 1, "a": "数据"})

    assert store.read_bytes("run/notes.txt") == b"second"
    assert store.read_json("run/data.json") == {"a": "数据", "b": 1}
    assert sorted(os.listdir(tmp_path / "artifacts" / "run")) == ["data.json", "notes.txt"]
    assert store.list("run") == ["data.json", "notes.txt"]


def test_interrupted_write_keeps_old_content_and_no_half_file(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write_text("notes.txt", "old")

    def crash(*args: object) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(store_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        store.write_text("notes.txt", "new content that never lands")
    monkeypatch.undo()

    assert store.read_bytes("notes.txt") == b"old"
    assert scratch_entries(tmp_path) == []


def test_build_raising_half_way_commits_nothing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="killed"):
        with store.build_artifact("run/model", kind="student") as tmp:
            (tmp / "model.bin").write_bytes(b"half a mod")
            raise RuntimeError("killed")

    assert not store.exists("run/model")
    assert store.load_manifest("run/model") is None
    assert scratch_entries(tmp_path) == []


def test_failed_commit_rename_commits_nothing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError("read-only store")

    monkeypatch.setattr(store_mod.os, "rename", refuse)
    with pytest.raises(StoreError, match="read-only store"):
        with store.build_artifact("run/model", kind="student") as tmp:
            build_model(tmp)
    monkeypatch.undo()

    assert not store.exists("run/model")
    assert scratch_entries(tmp_path) == []


# -- manifests ----------------------------------------------------------------------------------


def test_build_artifact_writes_manifest(store: Store) -> None:
    build = store.build_artifact("run/model", kind="student", config_hash="abc", meta={"acc": 0.9})
    with build as tmp:
        build_model(tmp)

    manifest = store.load_manifest("run/model")
    assert manifest == build.manifest
    assert manifest is not None
    assert (manifest.kind, manifest.config_hash, manifest.meta) == ("student", "abc", {"acc": 0.9})
    assert [f.path for f in manifest.files] == ["model.bin", "sub/config.json"]
    assert manifest.alambic_version
    assert manifest.created_at.endswith("+00:00")
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert store.verify("run/model") == manifest
    assert store.local_path("run/model").joinpath("model.bin").read_text() == "weights"


def test_truncated_manifest_counts_as_absent(store: Store, tmp_path: Path) -> None:
    with store.build_artifact("model", kind="student") as tmp:
        build_model(tmp)
    manifest_file = tmp_path / "artifacts" / "model" / "manifest.json"
    manifest_file.write_text(manifest_file.read_text()[:40])

    assert store.load_manifest("model") is None
    with pytest.raises(StoreError, match="incomplete"):
        store.verify("model")


@pytest.mark.parametrize("bad_path", ["../../outside.txt", "/etc/passwd", "sub/../../x", "manifest.json"])
def test_manifest_paths_cannot_escape(store: Store, tmp_path: Path, bad_path: str) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    entry = {"path": bad_path, "sha256": "0" * 64, "size": 6}
    store.write_json("model/manifest.json", {
        "kind": "student", "config_hash": "", "files": [entry],
        "created_at": "2025-01-01T00:00:00+00:00", "alambic_version": "0.1.0", "meta": {},
    })

    with pytest.raises(StoreError, match="path"):
        store.load_manifest("model")
    with pytest.raises(StoreError, match="path"):
        store.verify("model")


@pytest.mark.parametrize("rel", ["../x", "/abs/x", "a/../../x", "C:/x", "a\\b"])
def test_store_paths_cannot_escape(store: Store, rel: str) -> None:
    with pytest.raises(StoreError, match="unsafe path"):
        store.write_text(rel, "x")
    with pytest.raises(StoreError):
        store.run(rel)


def test_a_run_rows_stage_is_checked_before_it_is_read(store: Store) -> None:
    run = store.run("r")
    assert run.record_path("stages/abc", source="results.parquet", key="stage") == Path(run.base) / "stages/abc"
    with pytest.raises(UnsafePathError, match=r"results\.parquet: stage '/etc' is absolute"):
        run.record_path("/etc", source="results.parquet", key="stage")


# -- stages -------------------------------------------------------------------------------------


class Builder:
    """A stage build function that counts its calls."""

    def __init__(self, text: str = "weights") -> None:
        self.calls, self.text = 0, text

    def __call__(self, tmp: Path) -> dict:
        self.calls += 1
        return build_model(tmp, self.text)


def test_complete_stage_is_reused(store: Store) -> None:
    key = store.stage_key(stage="distill", config={"lr": 1e-4})
    build = Builder()

    first, reused_first = store.get_or_build_stage(key, "student", build)
    second, reused_second = store.get_or_build_stage(key, "student", build)

    assert (reused_first, reused_second, build.calls) == (False, True, 1)
    assert first == second
    assert first.meta == {"text": "weights"}
    assert store.stage_path(key) == f"stages/{key}"
    assert store.list("stages") == [key]


def test_stage_without_manifest_is_rebuilt(store: Store, tmp_path: Path) -> None:
    key = store.stage_key(stage="prune")
    stage_dir = tmp_path / "artifacts" / "stages" / key
    stage_dir.mkdir(parents=True)
    (stage_dir / "model.bin").write_text("half")  # a build killed before its manifest
    (stage_dir / "leftover.bin").write_text("junk")

    assert store.load_manifest(store.stage_path(key)) is None
    build = Builder()
    manifest, reused = store.get_or_build_stage(key, "student", build)

    assert (reused, build.calls) == (False, 1)
    assert store.verify(store.stage_path(key)) == manifest
    assert (stage_dir / "model.bin").read_text() == "weights"
    assert not (stage_dir / "leftover.bin").exists()
    assert scratch_entries(tmp_path) == []


@pytest.mark.parametrize("already_built", [False, True], ids=["then-built", "then-reused"])
def test_scratch_of_a_killed_build_is_removed_by_the_next_holder_of_the_stage(
        store: Store, tmp_path: Path, already_built: bool) -> None:
    key, other = store.stage_key(stage="distill"), store.stage_key(stage="other")
    if already_built:
        store.get_or_build_stage(key, "student", Builder())
    stages = tmp_path / "artifacts" / "stages"
    stages.mkdir(parents=True, exist_ok=True)
    for stale in (f".{key}.tmp-0123abcd", f".{other}.tmp-4567ef01"):  # builds SIGKILLed mid-way
        (stages / stale).mkdir()
        (stages / stale / "model.bin").write_text("half")

    store.get_or_build_stage(key, "student", Builder())

    # this stage's litter is gone; another stage's stays until a builder of that stage holds its lock
    assert [Path(p).name for p in scratch_entries(stages)] == [f".{other}.tmp-4567ef01"]


def test_corrupted_stage_is_detected_and_rebuilt(store: Store, tmp_path: Path) -> None:
    key = store.stage_key(stage="quantize")
    build = Builder()
    store.get_or_build_stage(key, "student", build)
    weights = tmp_path / "artifacts" / "stages" / key / "model.bin"
    data = bytearray(weights.read_bytes())
    data[0] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(StoreError, match="model.bin"):
        store.verify(store.stage_path(key))
    manifest, reused = store.get_or_build_stage(key, "student", build)

    assert (reused, build.calls) == (False, 2)
    assert store.verify(store.stage_path(key)) == manifest
    assert weights.read_text() == "weights"


def test_missing_file_is_detected(store: Store, tmp_path: Path) -> None:
    key = store.stage_key(stage="x")
    store.get_or_build_stage(key, "student", Builder())
    (tmp_path / "artifacts" / "stages" / key / "sub" / "config.json").unlink()

    with pytest.raises(StoreError, match="sub/config.json"):
        store.verify(store.stage_path(key))


def test_stage_with_escaping_manifest_is_rebuilt(store: Store) -> None:
    key = store.stage_key(stage="evil")
    entry = {"path": "../../outside", "sha256": "0" * 64, "size": 1}
    store.write_json(f"stages/{key}/manifest.json", {
        "kind": "student", "config_hash": key, "files": [entry],
        "created_at": "2025-01-01T00:00:00+00:00", "alambic_version": "0.1.0",
    })
    build = Builder()

    _, reused = store.get_or_build_stage(key, "student", build)

    assert (reused, build.calls) == (False, 1)
    store.verify(store.stage_path(key))


def _build_in_process(root: str, key: str, barrier: object, text: str) -> dict:
    def build(tmp: Path) -> dict:
        build_model(tmp, text)
        barrier.wait(timeout=60)  # type: ignore[attr-defined]  # both built before either commits
        return {"writer": text}

    # unlocked: both build at once, and the commit logic alone must keep one intact copy
    unlocked = dataclasses.replace(Store.open(root), lock_stages=False)
    manifest, _ = unlocked.get_or_build_stage(key, "student", build)
    return manifest.to_dict()


def _process_worker(root: str, key: str, barrier: object, text: str, results: object) -> None:
    results.put(_build_in_process(root, key, barrier, text))  # type: ignore[attr-defined]


def test_two_processes_building_one_stage(tmp_path: Path) -> None:
    root, key = str(tmp_path / "artifacts"), stable_hash({"stage": "race"})
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(root, key, barrier, f"w{i}", results))
             for i in range(2)]
    for proc in procs:
        proc.start()
    manifests = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)

    assert [proc.exitcode for proc in procs] == [0, 0]
    store = Store.open(root)
    final = store.verify(store.stage_path(key))
    assert manifests[0] == manifests[1] == final.to_dict()  # the later writer kept the first copy
    assert store.list("stages") == [key]
    assert scratch_entries(tmp_path) == []


def test_four_threads_building_one_stage(store: Store, tmp_path: Path) -> None:
    key = stable_hash({"stage": "threads"})
    barrier, results = threading.Barrier(4), []
    threads = [threading.Thread(target=lambda i=i: results.append(
        _build_in_process(str(tmp_path / "artifacts"), key, barrier, f"t{i}"))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    final = store.verify(store.stage_path(key))
    assert len(results) == 4 and all(r == final.to_dict() for r in results)
    assert scratch_entries(tmp_path) == []


# -- locations ----------------------------------------------------------------------------------


def test_run_directory(store: Store, tmp_path: Path) -> None:
    run = store.run("exp-1")
    run.write_text("stages/x.txt", "hi")

    assert (tmp_path / "artifacts" / "exp-1" / "stages" / "x.txt").read_text() == "hi"
    assert store.list() == ["exp-1"]
    with pytest.raises(StoreError):
        store.run("a/b")


def test_store_through_file_uri(tmp_path: Path) -> None:
    store = Store.open(f"file://{tmp_path}/remote-like")
    assert store.is_local
    manifest, _ = store.get_or_build_stage(store.stage_key(s=1), "student", Builder())

    path = store.local_path(store.stage_path(manifest.config_hash))
    assert path == tmp_path / "remote-like" / "stages" / manifest.config_hash
    assert (path / "model.bin").read_text() == "weights"
    assert Store.open(tmp_path / "remote-like").verify(f"stages/{manifest.config_hash}") == manifest


def remote_store(tmp_path: Path, cache: str = "cache") -> Store:
    """A store on a non-local pyarrow filesystem, to exercise the object-store code path."""
    (tmp_path / "bucket").mkdir(exist_ok=True)
    subtree = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    return Store(subtree, "prefix", "mem://bucket/prefix", tmp_path / cache)


def test_remote_store_uploads_then_downloads_to_cache(tmp_path: Path) -> None:
    store = remote_store(tmp_path)
    assert not store.is_local
    key = store.stage_key(s="remote")
    build = Builder()
    manifest, _ = store.get_or_build_stage(key, "student", build)
    _, reused = store.get_or_build_stage(key, "student", build)
    store.write_text("notes.txt", "hello")

    local = store.local_path(store.stage_path(key))

    assert (reused, build.calls) == (True, 1)
    assert (tmp_path / "bucket" / "prefix" / "stages" / key / "manifest.json").exists()
    assert store.read_bytes("notes.txt") == b"hello"
    assert local.is_relative_to(tmp_path / "cache")
    assert (local / "sub" / "config.json").read_text() == '{"layers": 4}'
    assert json.loads((local / "manifest.json").read_text()) == manifest.to_dict()
    assert store.local_path(store.stage_path(key)) == local


def test_remote_corruption_is_never_handed_out(tmp_path: Path) -> None:
    store = remote_store(tmp_path)
    key = store.stage_key(s="remote-corrupt")
    store.get_or_build_stage(key, "student", Builder())
    (tmp_path / "bucket" / "prefix" / "stages" / key / "model.bin").write_text("WEIGHTS")

    with pytest.raises(StoreError, match="model.bin"):
        remote_store(tmp_path, cache="fresh-cache").local_path(store.stage_path(key))
    build = Builder()
    _, reused = store.get_or_build_stage(key, "student", build)
    assert (reused, build.calls) == (False, 1)
    store.verify(store.stage_path(key))


def test_open_rejects_bad_uri() -> None:
    with pytest.raises(StoreError, match="cannot open"):
        Store.open("nosuchscheme://x/y")


def test_caller_cannot_write_the_manifest(store: Store) -> None:
    with pytest.raises(StoreError, match="reserved"):
        with store.build_artifact("model", kind="student") as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert not store.exists("model")


def _build_slowly(root: str, marks: str) -> None:
    """In a child process: build one stage, leaving a mark each time the build really runs."""
    import time as _time

    from alambic.store import Store

    def build(folder):
        with open(marks, "a", encoding="utf-8") as out:
            out.write("built\n")
        _time.sleep(1.0)  # long enough for the other process to arrive while this one builds
        (folder / "out.txt").write_text("x")

    Store.open(root).get_or_build_stage("ab" * 16, "demo", build)


def test_two_processes_wanting_one_stage_build_it_once(tmp_path):
    import multiprocessing

    marks = tmp_path / "marks.txt"
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_build_slowly, args=(str(tmp_path / "store"), str(marks))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert marks.read_text().splitlines() == ["built"]  # the second waited, then reused
    store = Store.open(tmp_path / "store")
    assert store.verify("stages/" + "ab" * 16).kind == "demo"
    assert store.list("stages") == ["ab" * 16]  # the lock file is hidden
