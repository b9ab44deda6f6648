"""Artifact store: run directories, atomic writes, manifests and content-addressed stages.

Layout (default root ``artifacts/``; any ``pyarrow.fs.FileSystem.from_uri`` URI works too)::

    <root>/<run-name>/                  Store.open(root).run(name): a Store rooted there
        <artifact>/ manifest.json ...   an artifact: files, plus manifest.json written last
        stages/<hash>/ manifest.json    memoized stage outputs, keyed by stable_hash(inputs)

(``stable_hash`` and the file hashes are in :mod:`alambic.fingerprint`; the checks of paths read
from records, ``inside``, in :mod:`alambic.paths`.)

API::

    store = Store.open("artifacts" | "file:///..." | "s3://bucket/prefix", cache_dir=None)
    store.run(name) -> Store                       the run directory <root>/<name>/
    store.exists(rel) / read_bytes / read_json / list(rel)
    store.write_bytes / write_text / write_json    atomic: readers see the old or the new file
    with store.build_artifact(rel, kind=, config_hash=, meta=) as tmp: ...   # write files in tmp
        -> .manifest after the block; nothing is committed if the block raises
    store.load_manifest(rel) -> Manifest | None    None when absent or incomplete
    store.verify(rel) -> Manifest                  re-hashes every file; StoreError names the bad one
    store.local_path(rel) -> Path                  remote artifacts are downloaded to a local cache
    store.record_path(row["stage"], source=, key=) local_path of a path read from a record, checked
    Store.stage_key(**inputs), store.stage_path(key) -> "stages/<key>"
    store.get_or_build_stage(key, kind, build, verify=True) -> (Manifest, reused)

Guarantees: an interrupted write leaves no half file or half artifact under its real name (scratch
names start with "." and contain ".tmp-"; `list` hides them). A directory without a manifest counts
as absent; a sha256 mismatch is never trusted. Locally, each writer builds in its own scratch dir
and renames it into place; if an intact copy is already there, the later writer discards its own.
Object stores have no directory rename: files go up first, the manifest last. Two concurrent
uploads of one artifact may mix files; `verify` detects that and `get_or_build_stage` rebuilds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alambic import __version__
from alambic.errors import StoreError
from alambic.fingerprint import hash_stream, stable_hash
from alambic.paths import inside, record_rel, safe_rel

try:
    import fcntl
except ImportError:  # Windows: no flock; stages stay correct by content addressing
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

log = logging.getLogger(__name__)

DEFAULT_ROOT = "artifacts"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20  # copy buffer


def _is_scratch(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


@dataclasses.dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What an artifact holds and how it was made; `manifest.json` is its `to_dict()`."""

    kind: str
    config_hash: str
    files: tuple[FileEntry, ...]
    created_at: str
    alambic_version: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"files": [dataclasses.asdict(f) for f in self.files]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        try:
            files = tuple(FileEntry(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in data["files"])
            manifest = cls(str(data["kind"]), str(data["config_hash"]), files, str(data["created_at"]),
                           str(data["alambic_version"]), dict(data.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{where}: not a valid manifest ({exc!r})") from exc
        for f in files:
            if safe_rel(f.path) in ("", MANIFEST):
                raise StoreError(f"{where}: invalid file path {f.path!r}")
        return manifest


def _hash_local_dir(root: Path) -> tuple[FileEntry, ...]:
    """Hash every file the caller wrote, fsyncing each so the rename below publishes durable data."""
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if path.is_symlink() or not path.is_file() or rel == MANIFEST:
            raise StoreError(f"{path}: artifacts hold regular files only, and '{MANIFEST}' is reserved")
        with open(path, "rb") as f:
            sha, size = hash_stream(f)
            os.fsync(f.fileno())
        entries.append(FileEntry(rel, sha, size))
    return tuple(entries)


def _write_local_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows within one filesystem
    finally:
        tmp.unlink(missing_ok=True)


class ArtifactBuild:
    """From `Store.build_artifact`: `with` yields a local scratch dir, committed on clean exit.

    `meta` may still be updated inside the block. After it, `manifest` is the committed manifest
    (the one already in place when an identical, intact artifact was there first).
    """

    def __init__(self, store: Store, rel: str, kind: str, config_hash: str, meta: dict[str, Any]):
        self.store, self.rel, self.kind, self.config_hash = store, rel, kind, config_hash
        self.meta = dict(meta)
        self.manifest: Manifest | None = None
        self.dir = Path()

    def __enter__(self) -> Path:
        self.dir = self.store._new_scratch_dir(self.rel)
        return self.dir

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                ours = Manifest(self.kind, self.config_hash, _hash_local_dir(self.dir), now, __version__, self.meta)
                self.manifest = self.store._commit(self.rel, self.dir, ours)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)  # already gone when renamed into place


@dataclasses.dataclass(frozen=True)
class Store:
    """A directory of artifacts on a pyarrow filesystem; paths given to methods are relative to it."""

    fs: FileSystem
    base: str
    uri: str
    cache_dir: Path
    #: one builder per stage at a time on a local store (see _stage_lock); tests of the unlocked
    #: race turn it off
    lock_stages: bool = True

    @classmethod
    def open(cls, location: str | os.PathLike[str] = DEFAULT_ROOT, cache_dir: Path | None = None) -> Store:
        """Open a local path (relative or absolute) or a URI such as file://, s3://bucket/prefix."""
        from pyarrow import fs as pafs

        location = os.fspath(location)
        if "://" in location:
            try:
                fs, base = pafs.FileSystem.from_uri(location)
            except (OSError, ValueError) as exc:  # pyarrow reports bad URIs as ArrowInvalid
                raise StoreError(f"cannot open artifact store {location!r}: {exc}") from exc
        else:
            fs, base = pafs.LocalFileSystem(), Path(location).resolve().as_posix()
        cache = cache_dir or Path(os.environ.get("ALAMBIC_CACHE_DIR", Path.home() / ".cache" / "alambic"))
        return cls(fs, base.rstrip("/") or "/", location.rstrip("/"), Path(cache))

    @property
    def is_local(self) -> bool:
        from pyarrow.fs import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    def run(self, name: str) -> Store:
        """The run directory `<root>/<name>/`, as a Store of its own."""
        if "/" in name or safe_rel(name) in ("", MANIFEST) or _is_scratch(name):
            raise StoreError(f"invalid run name {name!r}: one plain directory name expected")
        return dataclasses.replace(self, base=self._abs(name), uri=f"{self.uri}/{name}")

    def _abs(self, rel: str) -> str:
        rel = safe_rel(rel)
        return f"{self.base.rstrip('/')}/{rel}" if rel else self.base

    def _where(self, rel: str) -> str:
        return f"{self.uri}/{safe_rel(rel)}"

    # -- files ---------------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        from pyarrow.fs import FileType

        return self.fs.get_file_info(self._abs(rel)).type != FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._abs(rel)) as f:
                return f.read()
        except FileNotFoundError as exc:
            raise StoreError(f"{self._where(rel)}: no such file") from exc

    def read_json(self, rel: str) -> Any:
        try:
            return json.loads(self.read_bytes(rel))
        except ValueError as exc:
            raise StoreError(f"{self._where(rel)}: invalid JSON ({exc})") from exc

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically: a reader sees the old content or the new, never a half file."""
        if self.is_local:
            _write_local_atomic(Path(self._abs(rel)), data)
            return
        path = self._abs(rel)
        self.fs.create_dir(path.rpartition("/")[0], recursive=True)
        # Object stores (S3, GCS) publish an object only when its upload completes: already atomic.
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    def list(self, rel: str = "") -> list[str]:
        """Names directly under `rel` (empty when it does not exist), hidden entries (scratch
        directories, stage locks) left out."""
        from pyarrow.fs import FileSelector

        infos = self.fs.get_file_info(FileSelector(self._abs(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos if not i.base_name.startswith("."))

    # -- artifacts -----------------------------------------------------------------------------

    def build_artifact(self, rel: str, *, kind: str, config_hash: str = "",
                       meta: dict[str, Any] | None = None) -> ArtifactBuild:
        """`with store.build_artifact(rel, kind=...) as tmp:` write files into `tmp` (a local Path)."""
        if not safe_rel(rel):
            raise StoreError("an artifact needs a path inside the store")
        return ArtifactBuild(self, rel, kind, config_hash, meta or {})

    def load_manifest(self, rel: str) -> Manifest | None:
        """The artifact's manifest; None when the directory or its manifest is missing or truncated.

        Raises StoreError when the manifest parses but is invalid, e.g. a path escaping the store.
        """
        path = f"{safe_rel(rel)}/{MANIFEST}"
        try:
            with self.fs.open_input_stream(self._abs(path)) as f:
                data = json.loads(f.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return Manifest.from_dict(data, where=self._where(path))

    def verify(self, rel: str) -> Manifest:
        """Re-hash every file of the artifact; raise StoreError naming the first bad or missing one."""
        manifest = self.load_manifest(rel)
        if manifest is None:
            raise StoreError(f"{self._where(rel)}: incomplete artifact (no valid {MANIFEST})")
        for entry in manifest.files:
            path = f"{safe_rel(rel)}/{entry.path}"
            try:
                with self.fs.open_input_stream(self._abs(path)) as f:
                    sha, size = hash_stream(f)
            except FileNotFoundError as exc:
                raise StoreError(f"{self._where(path)}: missing (listed in {MANIFEST})") from exc
            if (sha, size) != (entry.sha256, entry.size):
                raise StoreError(f"{self._where(path)}: corrupted (sha256 {sha} != {entry.sha256})")
        return manifest

    def local_path(self, rel: str) -> Path:
        """A local path for `rel`; a remote artifact is downloaded (once, verified) into cache_dir."""
        if self.is_local:
            return Path(self._abs(rel))
        want = self.load_manifest(rel)
        if want is None:
            raise StoreError(f"{self._where(rel)}: not a complete artifact, cannot download it")
        cache = Store.open(self.cache_dir / stable_hash(self.uri)[:16], cache_dir=self.cache_dir)
        # Keyed by the manifest's hash, so a rebuilt remote artifact never reuses a stale copy.
        cached = f"{safe_rel(rel)}@{stable_hash(want.to_dict())[:16]}"
        if cache._existing_copy(cached, want) != want:
            scratch = cache._new_scratch_dir(cached)
            try:
                for entry in want.files:
                    (scratch / entry.path).parent.mkdir(parents=True, exist_ok=True)
                    with self.fs.open_input_stream(self._abs(f"{rel}/{entry.path}")) as src, \
                            open(scratch / entry.path, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
                cache._commit(cached, scratch, want)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            cache.verify(cached)  # a download that does not match its manifest is never handed out
        return cache.local_path(cached)

    def record_path(self, value: Any, *, source: str, key: str) -> Path:
        """:meth:`local_path` of a path read from a stored record (a results row's ``stage``),
        checked first as :func:`inside` checks it: relative, inside this store."""
        if self.is_local:
            return inside(self.base, value, source=source, key=key)
        return self.local_path(record_rel(value, source, key, self.uri))  # the cached copy has no links

    def _new_scratch_dir(self, rel: str) -> Path:
        if not self.is_local:
            return Path(tempfile.mkdtemp(prefix="alambic-"))
        target = Path(self._abs(rel))
        # A sibling of the target: same filesystem, so the final rename is atomic.
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        scratch.mkdir()
        return scratch

    def _existing_copy(self, rel: str, ours: Manifest) -> Manifest | None:
        """The artifact already at `rel` when it is the same thing as ours and intact."""
        try:
            found = self.load_manifest(rel)
            if found is None or (found.kind, found.config_hash) != (ours.kind, ours.config_hash):
                return None
            return self.verify(rel)
        except StoreError as exc:
            log.warning("%s; replacing it", exc)
            return None

    def _commit(self, rel: str, scratch: Path, manifest: Manifest) -> Manifest:
        commit = self._commit_local if self.is_local else self._commit_remote
        return commit(rel, scratch, manifest)

    def _commit_local(self, rel: str, scratch: Path, manifest: Manifest) -> Manifest:
        _write_local_atomic(scratch / MANIFEST, json.dumps(manifest.to_dict(), indent=2).encode())
        target, error = Path(self._abs(rel)), None
        for _ in range(10):  # retried only while racing other writers of the same artifact
            try:
                os.rename(scratch, target)  # fails when target is a non-empty directory
                return manifest
            except OSError as exc:
                error = exc
                if not target.exists():
                    continue
            existing = self._existing_copy(rel, manifest)
            if existing is not None:
                return existing  # keep the complete copy; ours is removed by the caller
            trash = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
            try:
                os.rename(target, trash)  # move the incomplete/corrupted copy aside, then retry
            except FileNotFoundError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
        raise StoreError(f"{self._where(rel)}: could not commit the artifact ({error})")

    def _commit_remote(self, rel: str, scratch: Path, manifest: Manifest) -> Manifest:
        existing = self._existing_copy(rel, manifest)
        if existing is not None:
            return existing
        rel = safe_rel(rel)
        if self.exists(f"{rel}/{MANIFEST}"):  # stale manifest first, so it never vouches for new files
            self.fs.delete_file(self._abs(f"{rel}/{MANIFEST}"))
        for entry in manifest.files:
            path = self._abs(f"{rel}/{entry.path}")
            self.fs.create_dir(path.rpartition("/")[0], recursive=True)
            with open(scratch / entry.path, "rb") as src, self.fs.open_output_stream(path) as out:
                shutil.copyfileobj(src, out, _CHUNK)
        self.write_json(f"{rel}/{MANIFEST}", manifest.to_dict())  # last: marks the artifact complete
        return manifest

    # -- stages --------------------------------------------------------------------------------

    @staticmethod
    def stage_key(**inputs: Any) -> str:
        return stable_hash(inputs)

    @staticmethod
    def stage_path(key: str) -> str:
        if not (key.isascii() and key.isalnum()):
            raise StoreError(f"invalid stage key {key!r}: expected a hex digest")
        return f"stages/{key}"

    def get_or_build_stage(self, key: str, kind: str, build: Callable[[Path], dict[str, Any] | None],
                           *, verify: bool = True) -> tuple[Manifest, bool]:
        """Reuse `stages/<key>` when complete (and verified); otherwise call `build(tmp_dir)`.

        `build` writes its files into the directory it is given and may return `meta` for the
        manifest. Returns the manifest and whether an existing stage was reused.
        """
        rel = self.stage_path(key)
        with self._stage_lock(key) as locked:  # concurrent trials wanting one stage: one builds, the rest reuse
            if locked:
                self._remove_stale_scratch(rel)
            try:
                found = self.verify(rel) if verify else self.load_manifest(rel)
            except StoreError as exc:  # incomplete or corrupted: never trusted, rebuilt
                found = None
                if self.exists(rel):
                    log.warning("%s; rebuilding", exc)
            if found is not None and (found.kind, found.config_hash) == (kind, key):
                return found, True
            artifact = self.build_artifact(rel, kind=kind, config_hash=key)
            with artifact as tmp:
                artifact.meta.update(build(tmp) or {})
            assert artifact.manifest is not None
            return artifact.manifest, False

    @contextlib.contextmanager
    def _stage_lock(self, key: str) -> Iterator[bool]:
        """An exclusive lock per stage on a local store (``stages/.<key>.lock``, flock: released
        when its holder dies). Object stores have no locks: content addressing keeps them correct,
        at worst two processes build the same stage and the first complete copy wins."""
        if not (self.lock_stages and self.is_local) or fcntl is None:
            yield False
            return
        # the lock file itself stays (empty): unlinking a file another process may be about to
        # lock would let two holders lock two different files
        path = Path(self._abs("stages")) / f".{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_stale_scratch(self, rel: str) -> None:
        """Delete the scratch folders of earlier builds of ``rel`` (killed before they committed).

        Called holding the stage's lock: every builder of this stage holds it while its scratch
        exists, so any scratch found now belongs to a process that died.
        """
        target = Path(self._abs(rel))
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            log.info("removing %s, left by a build that did not finish", stale)
            shutil.rmtree(stale, ignore_errors=True)
