"""Shard folders on object storage: a real S3-compatible server (moto's server mode) on 127.0.0.1, nothing else.

A small shard set is built from generated images, uploaded with ``upload`` (tars, manifest, index.json last), then
read back through the cache by verify, stats, pretraining (the same losses and batches as the local copy), predict's
shard-folder path and fine-tuning's shards root; a tampered tar is refused, two processes download once, and a
small cache limit evicts whole, unused sets least recently used first. An http:// folder is served by the standard
library's HTTP server.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from plankton_data.format import remote  # noqa: E402
from plankton_data.format.index import read_index  # noqa: E402
from plankton_data.format.lock import output_lock  # noqa: E402
from plankton_data.format.remote import RemoteError, cache_folder, localize, upload  # noqa: E402
from tests.conftest import make_shard_folder  # noqa: E402

SCRIPT_DIR = Path(sys.executable).parent
BUCKET = "plankton"
ROOT = f"s3://{BUCKET}/data"
NAMES = ("alpha", "beta", "gamma")  # three equal-shaped sets for the eviction test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Moto on a free port, dummy credentials, the bucket, and every set of NAMES built locally and uploaded."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port())
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PLANKTON_S3_ENDPOINT": f"http://{host}:{port}",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "PLANKTON_STORAGE_OPTIONS"):
            mp.delenv(key, raising=False)
        fs, _ = remote._filesystem(ROOT)
        fs.mkdir(BUCKET)
        base = tmp_path_factory.mktemp("local")
        sets = {name: make_shard_folder(base, name=name, seed=i) for i, name in enumerate(NAMES)}
        for s in sets.values():
            upload(s.folder, ROOT, manifest=s.manifest)
        yield {"fs": fs, "sets": sets, "base": base, "env": env, "endpoint": env["PLANKTON_S3_ENDPOINT"]}
    server.stop()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """A fresh cache per test; the leases this process took are dropped after it."""
    monkeypatch.setenv("PLANKTON_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PLANKTON_CACHE_MAX_BYTES", raising=False)
    yield tmp_path / "cache"
    remote.release()


def _url(name: str) -> str:
    return f"{ROOT}/shards/{name}"


def _gets(caplog, name: str) -> int:
    """GET requests the server logged for the tars of set ``name``."""
    return sum(
        bool(re.search(rf'"GET /{BUCKET}/data/shards/{name}/{name}-\d+\.tar', r.getMessage())) for r in caplog.records
    )


def _script(tool: str, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    path = SCRIPT_DIR / tool
    if not path.exists():
        pytest.skip(f"console script {path} not installed")
    return subprocess.run(
        [str(path), *args], capture_output=True, text=True, env=env or os.environ.copy(), timeout=timeout
    )


def _localize_in_subprocess(url: str, **popen) -> subprocess.Popen:
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
        "from plankton_data.format.remote import localize; print(localize(sys.argv[1]))"
    )
    return subprocess.Popen([sys.executable, "-c", code, url], text=True, cwd=Path(__file__).parents[1], **popen)


def test_urls_and_sizes():
    assert remote.is_remote("s3://b/p") and remote.is_remote("https://h/x") and remote.is_remote("gs://b")
    assert not remote.is_remote("shards/x") and not remote.is_remote("file:///tmp/x")
    assert not remote.is_remote(Path("s3://b/p"))  # a Path has lost the URL: the CLI options are strings
    assert remote.parse_bytes("50G") == 50 << 30 and remote.parse_bytes("1.5M") == 3 << 19
    assert remote.parse_bytes("123") == 123
    with pytest.raises(RemoteError, match="is not a size"):
        remote.parse_bytes("lots")
    assert cache_folder("s3://b/p/../../../etc", "/c") == Path("/c/s3/b/etc")  # never above the store's folder
    with pytest.raises(RemoteError, match="not a URL of a folder"):
        cache_folder("s3:///etc", "/c")


def test_upload_writes_the_layout_with_index_json_last(store, caplog):
    fs, s = store["fs"], store["sets"]["alpha"]
    fs.pipe_file(f"{BUCKET}/again/shards/alpha/alpha-000099.tar", b"left over from an older build")
    with caplog.at_level("INFO", logger="werkzeug"):
        caplog.clear()
        report = upload(s.folder, f"s3://{BUCKET}/again", manifest=s.manifest)
    puts = [m[1] for r in caplog.records if (m := re.search(r'"PUT /\S+/(again/\S+) HTTP', r.getMessage()))]
    assert puts[-1] == "again/shards/alpha/index.json"
    assert sorted(puts[:-2]) == [f"again/shards/alpha/{i.name}" for i in read_index(s.folder).shards]
    assert puts[-2] == "again/manifests/alpha.parquet"
    listed = sorted(p.split("/", 1)[1] for p in fs.find(f"{BUCKET}/again"))
    tars = [f"again/shards/alpha/alpha-00000{i}.tar" for i in range(4)]
    assert listed == sorted(["again/manifests/alpha.parquet", "again/shards/alpha/index.json", *tars])  # stray gone
    assert (report.tars, report.url) == (4, f"s3://{BUCKET}/again/shards/alpha")
    assert fs.cat_file(f"{BUCKET}/again/shards/alpha/index.json") == (s.folder / "index.json").read_bytes()


def test_localize_fetches_a_complete_checked_copy_once(store, _cache, caplog):
    s = store["sets"]["alpha"]
    with caplog.at_level("INFO", logger="werkzeug"):
        local = localize(_url("alpha"))
        assert _gets(caplog, "alpha") == 4
        assert localize(_url("alpha") + "/") == local  # the cached copy is current: no tar fetched again
        assert _gets(caplog, "alpha") == 4
    assert local == cache_folder(_url("alpha"), _cache) and str(local).startswith(str(_cache / "s3@127.0.0.1_"))
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in s.folder.iterdir())
    for p in s.folder.iterdir():
        assert (local / p.name).read_bytes() == p.read_bytes()
    assert (local.parent.parent / "manifests" / "alpha.parquet").read_bytes() == s.manifest.read_bytes()
    assert localize(s.folder) == s.folder  # a local folder is itself


def test_verify_and_stats_from_s3_through_the_console_script(store):
    r = _script("plankton-data", "verify", _url("beta"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"✓ {_url('beta')}: 4 shards, 36 samples intact"
    r = _script("plankton-data", "stats", "beta", "--shards", f"{ROOT}/shards", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["total"] == 36 and summary["datasets"]["beta"]["classes"] == {"disc": 12, "bar": 12, "ring": 12}
    r = _script("plankton-data", "stats", _url("beta"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["total"] == 36


def test_a_tampered_tar_is_refused_and_not_kept(store, _cache):
    fs, s = store["fs"], store["sets"]["gamma"]
    upload(s.folder, f"s3://{BUCKET}/tampered", manifest=s.manifest)
    key = f"{BUCKET}/tampered/shards/gamma/gamma-000001.tar"
    data = bytearray(fs.cat_file(key))
    data[700] ^= 0xFF  # one byte of the first image
    fs.pipe_file(key, bytes(data))
    url = f"s3://{BUCKET}/tampered/shards/gamma"
    with pytest.raises(RemoteError, match=r"gamma-000001\.tar: sha256 .* differs from index\.json's .*not kept"):
        localize(url)
    local = cache_folder(url, _cache)
    assert not (local / "gamma-000001.tar").exists() and not (local / "index.json").exists()
    assert not [p for p in local.iterdir() if "partial" in p.name]
    r = _script("plankton-data", "verify", url)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "sha256" in r.stderr and "not kept" in r.stderr


def test_two_processes_localizing_at_once_download_once(store, _cache, caplog):
    """The test holds the writer lock, so both processes are waiting when it lets go: one downloads, one waits."""
    url, logs = _url("alpha"), [_cache.parent / "one.log", _cache.parent / "two.log"]
    local = cache_folder(url, _cache)
    procs = []
    with caplog.at_level("INFO", logger="werkzeug"):
        with output_lock(local, tool="plankton cache"):
            for log in logs:
                procs.append(_localize_in_subprocess(url, stdout=subprocess.PIPE, stderr=log.open("w")))
            deadline = time.monotonic() + 60
            while not all("waiting" in log.read_text() for log in logs):
                assert time.monotonic() < deadline, [log.read_text() for log in logs]
                time.sleep(0.05)
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [log.read_text() for log in logs]
    assert outs == [str(local)] * 2
    assert _gets(caplog, "alpha") == 4  # each of the 4 tars fetched once, by one of the two
    assert sum("fetching 4 of 4 tars" in log.read_text() for log in logs) == 1
    assert read_index(local).total == 36


def test_eviction_removes_whole_unused_sets_least_recently_used_first(store, _cache):
    one = sum(p.stat().st_size for p in store["sets"]["alpha"].folder.iterdir())
    env = {**os.environ, "PLANKTON_CACHE_MAX_BYTES": str(int(2.6 * one))}  # two sets (and manifests) fit, not three
    for name in ("alpha", "beta", "alpha"):  # alpha used again after beta: beta is the least recently used
        proc = _localize_in_subprocess(_url(name), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.wait(timeout=120) == 0, proc.communicate()
        time.sleep(0.02)
    folders = {name: cache_folder(_url(name), _cache) for name in NAMES}
    assert (folders["alpha"] / "index.json").is_file() and (folders["beta"] / "index.json").is_file()
    gamma = localize(_url("gamma"), max_bytes=int(2.6 * one))  # in this process: it keeps its lease
    assert (gamma / "index.json").is_file() and (folders["alpha"] / "index.json").is_file()
    assert not folders["beta"].exists()  # evicted whole, its manifest too
    assert not (folders["beta"].parent.parent / "manifests" / "beta.parquet").exists()
    # gamma is in use by this process: the cache cannot make room for a third set by evicting it
    r = _script("plankton-data", "verify", _url("beta"), env={**env, "PLANKTON_CACHE_MAX_BYTES": str(int(1.5 * one))})
    assert r.returncode == 1 and r.stderr.startswith("error: the cache") and "in use" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (gamma / "index.json").is_file()


def test_a_new_version_replaces_the_cached_copy_only_when_nobody_reads_it(store, _cache, tmp_path):
    s = store["sets"]["alpha"]
    url = f"s3://{BUCKET}/versions/shards/alpha"
    upload(s.folder, f"s3://{BUCKET}/versions", manifest=s.manifest)
    local = localize(url)  # this process now reads version 1
    v2 = make_shard_folder(tmp_path / "v2", name="alpha", seed=7)
    upload(v2.folder, f"s3://{BUCKET}/versions", manifest=v2.manifest)
    r = _script("plankton-data", "verify", url)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"error: the store holds a new version of {url} but another process is reading")
    assert (local / "index.json").read_bytes() == (s.folder / "index.json").read_bytes()  # untouched
    remote.release()  # this process is done with version 1
    r = _script("plankton-data", "verify", url)
    assert r.returncode == 0, r.stderr
    assert (local / "index.json").read_bytes() == (v2.folder / "index.json").read_bytes()
    for p in v2.folder.iterdir():
        assert (local / p.name).read_bytes() == p.read_bytes()


def test_a_new_index_over_the_same_tars_fetches_no_tar(store, _cache, tmp_path, caplog):
    import shutil
    from dataclasses import replace

    from plankton_data.format.index import write_index

    s = store["sets"]["beta"]
    copy = tmp_path / "copy"
    shutil.copytree(s.root.parent, copy)
    folder = copy / "shards" / "beta"
    write_index(replace(read_index(folder), args={"note": "re-indexed"}), folder)  # same tars, other index bytes
    url = f"s3://{BUCKET}/reindexed/shards/beta"
    upload(s.folder, f"s3://{BUCKET}/reindexed", manifest=s.manifest)
    local = localize(url)
    remote.release()
    upload(folder, f"s3://{BUCKET}/reindexed")
    with caplog.at_level("INFO", logger="werkzeug"):
        caplog.clear()
        assert localize(url) == local
    assert not [r for r in caplog.records if re.search(r'"GET /\S+\.tar HTTP', r.getMessage())]
    assert (local / "index.json").read_bytes() == (folder / "index.json").read_bytes()


def test_pretraining_from_s3_gives_the_local_batches_and_losses(store, tmp_path):
    torch = pytest.importorskip("torch")
    from typer.testing import CliRunner

    from plankton_train.cli.main import app
    from plankton_train.data.stream import ShardStream

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s, runs = store["sets"]["alpha"], {}
        for label, source in (("local", str(s.folder)), ("s3", _url("alpha"))):
            out = tmp_path / label
            args = ["pretrain", "--shard-set", source, "--out", str(out), "--model", "mae_test", "--batch-size", "4"]
            args += ["--eff-batch", "8", "--steps", "3", "--warmup-steps", "1", "--workers", "0", "--log-every", "1"]
            r = CliRunner().invoke(app, [*args, "--seed", "3"])
            assert r.exit_code == 0, r.output
            runs[label] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(runs["s3"]) == 3 and runs["s3"] == runs["local"]
        out = tmp_path / "resumed"
        r = CliRunner().invoke(
            app, [*args[:2], _url("alpha"), "--out", str(out), *args[5:], "--seed", "3", "--stop-after", "2"]
        )
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(app, ["pretrain", "--resume", str(out), "--shard-set", _url("alpha"), "--workers", "0"])
        assert r.exit_code == 0, r.output
        assert [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()] == runs["local"]
        cached = localize(_url("alpha"))
        streams = [ShardStream(folder, 4, out_size=32, seed=3, epochs=1) for folder in (s.folder, cached)]
        batches = [list(stream) for stream in streams]
        assert len(batches[0]) == len(batches[1]) == 9
        for a, b in zip(*batches, strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["images"], b["images"])
    finally:
        torch.set_num_threads(threads)


def test_predict_and_finetune_resolve_remote_sets(store):
    pytest.importorskip("torch")
    from plankton_data.format.remote import localize_for_manifest
    from plankton_train.protocol.predict import iter_items

    s = store["sets"]["beta"]
    root = localize_for_manifest(f"{ROOT}/shards", s.manifest)
    assert (root / "beta" / "index.json").is_file() and not (root / "alpha").exists()
    remote_items = [(i.source, i.data) for i in iter_items(localize(_url("beta")))]
    assert remote_items == [(i.source, i.data) for i in iter_items(s.folder)] and len(remote_items) == 36


def test_an_unreachable_store_is_one_fast_line(store, _cache):
    env = {**os.environ, "PLANKTON_S3_ENDPOINT": f"http://127.0.0.1:{_free_port()}"}
    t0 = time.monotonic()
    r = _script("plankton-data", "verify", _url("alpha"), env=env)
    assert time.monotonic() - t0 < 20
    assert r.returncode == 1 and r.stderr.startswith("error: cannot reach s3://") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _script("plankton-data", "verify", _url("nosuchset"))
    assert (
        r.returncode == 1 and r.stderr.strip() == f"error: {_url('nosuchset')}/index.json does not exist on the store"
    )


def test_an_http_folder_is_read_through_the_cache(store, _cache):
    base, s = store["base"], store["sets"]["alpha"]

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(base)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shards/alpha"
        local = localize(url)
        assert local == cache_folder(url, _cache)
        assert [(p.name, p.read_bytes()) for p in sorted(local.iterdir())] == [
            (p.name, p.read_bytes()) for p in sorted(s.folder.iterdir())
        ]
        from plankton_data.audit.verify import verify

        assert verify(local) == []  # the manifest came along, to its place beside shards/
    finally:
        server.shutdown()


def test_finetune_and_predict_through_the_cli_from_s3_equal_the_local_runs(store, tmp_path):
    torch = pytest.importorskip("torch")
    import pandas as pd
    from typer.testing import CliRunner

    from plankton_train.cli.main import app

    s, runner = store["sets"]["beta"], CliRunner()
    splits = tmp_path / "splits.parquet"
    assert runner.invoke(app, ["splits", str(s.manifest), "--out", str(splits)]).exit_code == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tables = {}
        for label, root, folder in (("local", str(s.root), str(s.folder)), ("s3", f"{ROOT}/shards", _url("beta"))):
            run = tmp_path / label
            args = ["finetune", "--manifest", str(s.manifest), "--shards", root, "--splits", str(splits)]
            args += ["--init", "random", "--arch", "vit_tiny_patch16_224", "--img-size", "32", "--resize", "36"]
            args += ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "8", "--workers", "0", "--device", "cpu"]
            r = runner.invoke(app, [*args, "--out", str(run)])
            assert r.exit_code == 0, r.output
            r = runner.invoke(
                app, ["predict", str(run), folder, "--out", str(tmp_path / f"{label}.csv"), "--device", "cpu"]
            )
            assert r.exit_code == 0, r.output
            tables[label] = pd.read_csv(tmp_path / f"{label}.csv")
        metrics = [json.loads((tmp_path / label / "metrics.json").read_text()) for label in ("local", "s3")]
        for m in metrics:
            del m["seconds"]
        assert metrics[0] == metrics[1] and "accuracy" in metrics[0]
        assert len(tables["s3"]) == 36 and tables["s3"].equals(tables["local"])
    finally:
        torch.set_num_threads(threads)
