"""Shard folders on object storage (``s3://``, ``gs://``, ``https://``: any fsspec URL), read through a local cache.

Training and auditing read shards as local files (exact epochs, resume and DDP balance rely on ``pread`` at
manifest offsets), so a remote shard folder is first fetched whole into a cache by :func:`localize`, which
returns the local folder. Every command that takes a shard folder or shards root resolves it through this module.

Layout on the store (what :func:`upload` writes; ``ROOT`` is e.g. ``s3://bucket/prefix``)::

    ROOT/shards/NAME/index.json          written last: a reader never sees a half set
    ROOT/shards/NAME/NAME-000000.tar ...
    ROOT/manifests/NAME.parquet          optional for training; verify and stats need it

The cache mirrors the store: ``<cache>/<store>/<bucket>/<prefix>/shards/NAME/``, where ``<store>`` is the URL
scheme (``s3@127.0.0.1_9000`` when ``PLANKTON_S3_ENDPOINT`` names another endpoint), so ``index.json``'s
relative manifest path works unchanged. The cache folder is ``$PLANKTON_CACHE`` or ``~/.cache/plankton``; its
size limit is ``$PLANKTON_CACHE_MAX_BYTES`` (``50G``, ``500M`` or bytes; default 100 GiB).

Guarantees:

* index.json is fetched on every call; when its bytes equal the cached copy's, the cached set is complete and
  used as is. Otherwise each listed tar is downloaded (reused if the cached file already has the listed sha256)
  under a temp name, its size and sha256 compared with index.json, then renamed; a mismatch is one
  :class:`RemoteError` line and the file is not kept. index.json is written last, so a cached folder with an
  index.json is complete.
* Several processes (DDP ranks on one node) localizing one set: one downloads, holding ``output_lock`` on the
  cached folder; the others wait for it and then find the set complete.
* A process that localized a set holds a shared ``flock`` on ``.NAME.inuse`` beside it until it exits (a
  *lease*; forked DataLoader workers share it), taken under the writer lock. Eviction needs the writer lock and
  the lease exclusively, so it removes only sets nobody is fetching or reading, least recently localized first,
  whole sets (index.json first). A new version on the store replaces the cached copy only when no other process
  reads it; otherwise that is one :class:`RemoteError` line (a running training never loses its files).
* An unreachable store, missing credentials or a missing fsspec backend: one :class:`RemoteError` line, fast
  (one connection attempt, 10 s connect timeout).

Store options: ``PLANKTON_S3_ENDPOINT`` (an S3-compatible server, e.g. MinIO), ``PLANKTON_STORAGE_OPTIONS``
(a JSON object passed to ``fsspec.filesystem``), and whatever the backend reads itself (``AWS_*``,
``GOOGLE_APPLICATION_CREDENTIALS``, fsspec's ``FSSPEC_S3_*``).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from plankton_data.errors import OutputLocked, PlanktonDataError
from plankton_data.format import atomic
from plankton_data.format.index import (
    INDEX_NAME,
    ShardIndex,
    ShardInfo,
    file_sha256,
    manifest_mismatch,
    manifest_path,
    read_index,
)
from plankton_data.format.lock import output_lock

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no leases, eviction removes any set
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ENV_CACHE = "PLANKTON_CACHE"
ENV_MAX_BYTES = "PLANKTON_CACHE_MAX_BYTES"
ENV_S3_ENDPOINT = "PLANKTON_S3_ENDPOINT"
ENV_OPTIONS = "PLANKTON_STORAGE_OPTIONS"
DEFAULT_MAX_BYTES = 100 << 30
#: fsspec backend of each scheme and the extra that installs it (for the message when it is missing).
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}
_DOWNLOAD_THREADS = 8
_LEASES: dict[Path, int] = {}  # cached folder -> fd holding its shared in-use lock, for the process lifetime


class RemoteError(PlanktonDataError):
    """A remote shard folder that cannot be fetched, is damaged on the store, or does not fit the cache."""


def is_remote(path: Path | str | None) -> bool:
    """Whether ``path`` is a URL of a store (``s3://...``, ``https://...``), not a local path or ``file://``."""
    if not isinstance(path, str):
        return False  # a pathlib.Path has lost the URL's "//" already; the CLI options are strings
    scheme = urlsplit(path).scheme
    return "://" in path and len(scheme) > 1 and scheme != "file"


def default_cache_dir() -> Path:
    """``$PLANKTON_CACHE``, else ``~/.cache/plankton``."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "plankton")


def parse_bytes(text: str) -> int:
    """``"50G"`` / ``"500M"`` / ``"1.5T"`` / ``"123456"`` -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise RemoteError(f"{ENV_MAX_BYTES}={text!r} is not a size (e.g. 50G, 500M or a number of bytes)")
    unit = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[match[2].upper()]
    return int(float(match[1]) * (1 << unit))


def cache_limit() -> int:
    """The cache size limit in bytes: ``$PLANKTON_CACHE_MAX_BYTES``, else 100 GiB."""
    text = os.environ.get(ENV_MAX_BYTES, "")
    return parse_bytes(text) if text.strip() else DEFAULT_MAX_BYTES


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for ``url``'s store: ``$PLANKTON_STORAGE_OPTIONS``, the S3 endpoint, short timeouts."""
    text = os.environ.get(ENV_OPTIONS, "").strip()
    try:
        opts = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise RemoteError(f"{ENV_OPTIONS} is not a JSON object ({exc})") from None
    if not isinstance(opts, dict):
        raise RemoteError(f"{ENV_OPTIONS} is not a JSON object")
    if urlsplit(url).scheme in ("s3", "s3a"):
        if endpoint := os.environ.get(ENV_S3_ENDPOINT, "").strip():
            opts.setdefault("endpoint_url", endpoint)
        config = opts.setdefault("config_kwargs", {})
        config.setdefault("connect_timeout", 10)
        config.setdefault("retries", {"max_attempts": 2})
    return opts


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path inside it."""
    import fsspec  # lazy: only remote folders need it

    scheme = urlsplit(url).scheme
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError:
        extra = EXTRAS.get(scheme)
        hint = f"pip install 'plankton-ssl[{extra}]'" if extra else f"install the fsspec backend of {scheme}://"
        raise RemoteError(f"{scheme}:// needs an fsspec backend that is not installed: {hint}") from None
    except ValueError as exc:
        raise RemoteError(f"{url}: {exc}") from None


def _store_error(url: str, exc: BaseException) -> RemoteError:
    """One line for anything a store raised while reading or writing ``url``."""
    if isinstance(exc, FileNotFoundError):
        return RemoteError(f"{url} does not exist on the store")
    if isinstance(exc, PermissionError):
        return RemoteError(f"{url}: access denied (check the store's credentials)")
    text = " ".join(str(exc).split()) or type(exc).__name__
    return RemoteError(f"cannot reach {url}: {type(exc).__name__}: {text}")


def _join(url: str, relative: str) -> str:
    """``url`` + a relative POSIX path, with ``..`` resolved inside the URL's path."""
    parts = urlsplit(url)
    path = posixpath.normpath(posixpath.join(parts.path or "/", relative))
    return f"{parts.scheme}://{parts.netloc}{path}"


def cache_folder(url: str, cache_dir: Path | str | None = None) -> Path:
    """Where ``url`` lies in the cache: ``<cache>/<store>/<host or bucket>/<path>`` (see the module docstring)."""
    parts = urlsplit(url.rstrip("/"))
    store = parts.scheme
    endpoint = os.environ.get(ENV_S3_ENDPOINT, "").strip() if store in ("s3", "s3a") else ""
    if endpoint:
        store += "@" + re.sub(r"[^A-Za-z0-9.-]+", "_", urlsplit(endpoint).netloc or endpoint)
    segments = [s for s in posixpath.normpath(parts.path or "/").split("/") if s not in ("", ".")]
    if ".." in segments or not parts.netloc:
        raise RemoteError(f"{url} is not a URL of a folder on a store")
    netloc = re.sub(r"[^A-Za-z0-9._@-]+", "_", parts.netloc)
    return Path(cache_dir or default_cache_dir()).joinpath(store, netloc, *segments)


def _lease_path(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.inuse")


def _take_lease(folder: Path) -> None:
    """Hold the shared in-use lock of the cached ``folder`` until this process exits (idempotent); marks it used.

    Taken under the folder's writer lock, which an evictor or an updater holds too: it never has to wait.
    """
    path = _lease_path(folder)
    if folder not in _LEASES:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
        _LEASES[folder] = fd
    os.utime(path)  # the LRU clock


def _unused(folder: Path) -> bool:
    """Whether no process holds a lease on the cached ``folder`` (call with its writer lock held, so none can
    take one meanwhile; forked DataLoader workers of this process count as users)."""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    fd = os.open(_lease_path(folder), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # drops the probe's lock too


def release(folder: Path | str | None = None) -> None:
    """Drop this process's lease on one cached folder (all of them with ``None``), so eviction may remove it."""
    for key in [Path(folder)] if folder is not None else list(_LEASES):
        fd = _LEASES.pop(key, None)
        if fd is not None:
            os.close(fd)


@dataclass(frozen=True)
class _Cached:
    folder: Path
    lease: Path
    bytes: int
    used: float  # mtime of the lease file: when the set was last localized


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _cached_manifest(folder: Path) -> Path | None:
    try:
        return manifest_path(folder, read_index(folder)) if (folder / INDEX_NAME).is_file() else None
    except PlanktonDataError:
        return None


def _cached_sets(cache_dir: Path) -> list[_Cached]:
    found = []
    for lease in cache_dir.rglob(".*.inuse"):
        folder = lease.with_name(lease.name[1 : -len(".inuse")])
        manifest = _cached_manifest(folder)
        size = _size(folder) + (_size(manifest) if manifest else 0)
        found.append(_Cached(folder, lease, size, lease.stat().st_mtime))
    return sorted(found, key=lambda c: c.used)


def _evict(cached: _Cached) -> bool:
    """Remove one cached set if nobody is fetching it (its writer lock is free) and no process holds its lease;
    index.json first, so it never looks complete."""
    with ExitStack() as stack:
        try:
            stack.enter_context(output_lock(cached.folder, tool="plankton cache"))
        except OutputLocked:
            return False
        if not _unused(cached.folder):
            return False
        manifest = _cached_manifest(cached.folder)
        (cached.folder / INDEX_NAME).unlink(missing_ok=True)
        if manifest is not None:
            manifest.unlink(missing_ok=True)
        shutil.rmtree(cached.folder, ignore_errors=True)
        log.info("cache: evicted %s (%.1f MB)", cached.folder, cached.bytes / 1e6)
        return True


def make_room(cache_dir: Path, *, keep: Path, need: int, max_bytes: int) -> None:
    """Evict least recently used sets (never ``keep``, never one in use) until ``need`` more bytes fit.

    Raises:
        RemoteError: they do not fit even after evicting every set not in use.
    """
    others = [c for c in _cached_sets(cache_dir) if c.folder != keep]
    used = sum(c.bytes for c in others) + _size(keep)
    for cached in others:
        if used + need <= max_bytes:
            break
        if _evict(cached):
            used -= cached.bytes
    if used + need > max_bytes:
        raise RemoteError(
            f"the cache {cache_dir} cannot hold {keep.name} ({need / 1e6:,.1f} MB more): its limit is "
            f"{max_bytes / 1e6:,.1f} MB and {used / 1e6:,.1f} MB are shard sets in use; raise {ENV_MAX_BYTES} "
            f"or point {ENV_CACHE} elsewhere"
        )


def _wait_for_lock(stack: ExitStack, folder: Path) -> None:
    """Enter ``output_lock`` on the cached ``folder`` into ``stack``, polling every 0.2 s while another process
    holds it (it is downloading the same set: wait for it, then find the set complete)."""
    said = False
    while True:
        try:
            stack.enter_context(output_lock(folder, tool="plankton cache"))
            return
        except OutputLocked as exc:
            if not said:
                log.info("cache: %s; waiting", exc)
                said = True
            time.sleep(0.2)


def _fetch(fs: Any, url: str, rpath: str, dest: Path, *, size: int | None, sha256: str) -> None:
    """Download ``rpath`` to ``dest`` through a temp name; keep it only if its size and sha256 match."""
    with atomic.atomic_path(dest) as tmp:
        try:
            fs.get_file(rpath, str(tmp))
        except Exception as exc:  # backends raise their own types (botocore, aiohttp, google.auth)
            raise _store_error(url, exc) from None
        got = tmp.stat().st_size
        if size is not None and got != size:
            raise RemoteError(f"{url} has {got:,} bytes, index.json lists {size:,}: not kept (re-upload the set)")
        digest = file_sha256(tmp)
        if sha256 and digest != sha256:
            raise RemoteError(
                f"{url}: sha256 {digest[:16]}… differs from index.json's {sha256[:16]}…: the file on the store is "
                "damaged or was replaced; not kept (re-upload the set)"
            )


def _fetch_shard(fs: Any, url: str, rpath: str, local: Path, info: ShardInfo) -> None:
    _fetch(fs, f"{url}/{info.name}", f"{rpath}/{info.name}", local / info.name, size=info.bytes, sha256=info.sha256)


def _read_text(fs: Any, url: str, rpath: str) -> bytes:
    try:
        return fs.cat_file(rpath)
    except Exception as exc:
        raise _store_error(url, exc) from None


def _exists(fs: Any, rpath: str) -> bool:
    try:
        return bool(fs.exists(rpath))
    except Exception:
        return False


def _parallel(jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` on a few threads; the first error stops the queued ones and is raised."""
    if not jobs:
        return
    with ThreadPoolExecutor(min(_DOWNLOAD_THREADS, len(jobs))) as pool:
        futures = [pool.submit(job) for job in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in pending:
            fut.cancel()
        for fut in futures:
            error = None if fut.cancelled() or not fut.done() else fut.exception()
            if error is not None:
                raise error


def _have(path: Path, info: ShardInfo) -> bool:
    return path.is_file() and path.stat().st_size == info.bytes and file_sha256(path) == info.sha256


def _remote_manifest(url: str, index: ShardIndex) -> list[str]:
    """Where the set's manifest may lie on the store: index.json's relative path, then ``ROOT/manifests/``."""
    found = [_join(url + "/", index.manifest)] if index.manifest else []
    conventional = _join(url + "/", f"../../manifests/{index.name}.parquet")
    return found + ([conventional] if conventional not in found else [])


def localize(url_or_path: Path | str, *, cache_dir: Path | str | None = None, max_bytes: int | None = None) -> Path:
    """The local folder of the shard folder ``url_or_path``: itself if local, else its cached copy, fetched now.

    Args:
        url_or_path: a local shard folder (returned unchanged, as a ``Path``) or a URL (``s3://b/p/shards/NAME``).
        cache_dir: the cache [default: :func:`default_cache_dir`].
        max_bytes: the cache limit [default: :func:`cache_limit`].

    Returns the cached folder, laid out as the remote one (index.json + every tar it lists, each sha256-checked;
    the manifest beside it as on the store, if the store has it). This process keeps a lease on it until exit.

    Raises:
        RemoteError: the store cannot be reached, has no index.json there, holds a file that does not match
            index.json, or the set does not fit the cache.
    """
    if not is_remote(url_or_path):
        return Path(url_or_path)
    url = str(url_or_path).rstrip("/")
    cache = Path(cache_dir or default_cache_dir())
    limit = cache_limit() if max_bytes is None else max_bytes
    local = cache_folder(url, cache)
    fs, rpath = _filesystem(url)
    raw = _read_text(fs, f"{url}/{INDEX_NAME}", f"{rpath}/{INDEX_NAME}")
    with ExitStack() as stack:
        _wait_for_lock(stack, local)
        _lease_path(local).touch()  # makes even a folder whose first fetch is killed visible to eviction
        cached = local / INDEX_NAME
        if cached.is_file() and cached.read_bytes() == raw:
            _take_lease(local)
            return local
        if cached.is_file():  # the store holds another version of the set: replace the cached one, if unused
            release(local)
            if not _unused(local):
                raise RemoteError(
                    f"the store holds a new version of {url} but another process is reading the cached copy in "
                    f"{local}; wait for it to finish, or set {ENV_CACHE} to another folder"
                )
        cached.unlink(missing_ok=True)  # from here on the folder is incomplete until the new index lands
        local.mkdir(parents=True, exist_ok=True)
        probe = atomic.write_bytes(local.with_name(f".{local.name}.index-remote.json"), raw, fsync=False)
        try:
            index = read_index(probe)
        except PlanktonDataError as exc:
            raise RemoteError(f"{url}/{INDEX_NAME} is not a shard index this version reads ({exc})") from None
        finally:
            probe.unlink(missing_ok=True)
        listed = {s.name for s in index.shards}
        if any("/" in name or name in (INDEX_NAME, "", ".", "..") for name in listed):
            raise RemoteError(f"{url}/{INDEX_NAME} lists a shard name that is not a file name")
        for stale in local.iterdir():
            if stale.name not in listed:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        missing = [s for s in index.shards if not _have(local / s.name, s)]
        need = sum(s.bytes for s in missing)
        make_room(cache, keep=local, need=need, max_bytes=limit)
        log.info(
            "cache: fetching %d of %d tars (%.1f MB) of %s into %s", len(missing), len(listed), need / 1e6, url, local
        )
        t0 = time.perf_counter()
        _parallel([partial(_fetch_shard, fs, url, rpath, local, s) for s in missing])
        _fetch_manifest(fs, url, index, cache)
        atomic.write_bytes(cached, raw)
        _take_lease(local)
        log.info("cache: fetched %s in %.1f s", url, time.perf_counter() - t0)
        return local


def _fetch_manifest(fs: Any, url: str, index: ShardIndex, cache: Path) -> None:
    """Fetch the set's manifest, if the store has one, to its mirrored place in the cache (sha256-checked)."""
    for murl in _remote_manifest(url, index):
        mpath = fs._strip_protocol(murl)
        if not _exists(fs, mpath):
            continue
        dest = cache_folder(murl, cache)
        current = dest.is_file() and bool(index.manifest_sha256) and manifest_mismatch(index, dest) is None
        if not current:
            _fetch(fs, murl, mpath, dest, size=None, sha256=index.manifest_sha256)
        return


def localize_root(
    root: Path | str, names: Iterable[str], *, cache_dir: Path | str | None = None, max_bytes: int | None = None
) -> Path:
    """A shards root: itself if local, else the cached root after localizing its shard folders ``names``."""
    if not is_remote(root):
        return Path(root)
    url = str(root).rstrip("/")
    for name in sorted(set(names)):
        localize(f"{url}/{name}", cache_dir=cache_dir, max_bytes=max_bytes)
    return cache_folder(url, cache_dir)


def localize_for_manifest(
    root: Path | str, manifest: Path | str, *, cache_dir: Path | str | None = None, max_bytes: int | None = None
) -> Path:
    """The shards root for ``manifest``'s rows: the cached root holding every shard folder its ``shard`` column
    names (``NAME/NAME-000000.tar``) when ``root`` is a URL, else ``root`` itself."""
    if not is_remote(root):
        return Path(root)
    import pyarrow.parquet as pq

    shards = pq.read_table(manifest, columns=["shard"]).column("shard").unique().to_pylist()
    return localize_root(root, {str(s).split("/")[0] for s in shards if s}, cache_dir=cache_dir, max_bytes=max_bytes)


@dataclass(frozen=True)
class UploadReport:
    """What :func:`upload` wrote."""

    url: str  # ROOT/shards/NAME
    tars: int
    bytes: int
    manifest: str  # its URL, or "" when the set has no manifest
    seconds: float


def upload(
    folder: Path | str,
    root: str,
    *,
    manifest: Path | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> UploadReport:
    """Copy the local shard folder ``folder`` to ``ROOT/shards/NAME/`` and its manifest to ``ROOT/manifests/``.

    Order: the old remote index.json is deleted first, then the tars, the manifest, and index.json last, so a
    reader sees either no set or a whole one. Every tar's size and sha256 are checked against index.json
    before anything is sent; tars the remote folder holds that the new index does not list are deleted after.
    Holds the local folder's ``output_lock`` (a ``shard`` run rewriting it is refused, and the reverse).

    Raises:
        RemoteError: the folder does not match its index.json, or the store cannot be written.
    """
    folder = Path(folder)
    index = read_index(folder)
    mfile = Path(manifest) if manifest else manifest_path(folder, index)
    if mfile is not None and (why := manifest_mismatch(index, mfile)):
        raise RemoteError(why)
    base = f"{root.rstrip('/')}/shards/{index.name}"
    murl = f"{root.rstrip('/')}/manifests/{index.name}.parquet" if mfile is not None else ""
    t0 = time.perf_counter()
    with output_lock(folder):
        for info in index.shards:
            if not _have(folder / info.name, info):
                raise RemoteError(f"{folder / info.name} does not match index.json: run plankton-data verify {folder}")
        fs, rpath = _filesystem(base)
        files = [(folder / s.name, s.name, s.bytes) for s in index.shards]
        total, done = sum(b for *_, b in files), 0
        try:
            if _exists(fs, f"{rpath}/{INDEX_NAME}"):
                fs.rm_file(f"{rpath}/{INDEX_NAME}")
            for path, name, size in files:
                fs.put_file(str(path), f"{rpath}/{name}")
                done += size
                if progress:
                    progress(done, total)
            if mfile is not None:
                fs.put_file(str(mfile), fs._strip_protocol(murl))
            fs.put_file(str(folder / INDEX_NAME), f"{rpath}/{INDEX_NAME}")
            listed = {name for _, name, _ in files} | {INDEX_NAME}
            for entry in fs.ls(rpath, detail=False):
                if posixpath.basename(entry.rstrip("/")) not in listed:
                    fs.rm(entry, recursive=True)
        except NotImplementedError:
            raise RemoteError(
                f"{urlsplit(root).scheme}:// cannot be written through fsspec; upload to s3:// or gs://"
            ) from None
        except RemoteError:
            raise
        except Exception as exc:
            raise _store_error(base, exc) from None
    return UploadReport(base, len(files), total, murl, time.perf_counter() - t0)
