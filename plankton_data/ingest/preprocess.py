"""Turn one raw record into stored samples: decode -> dataset step -> grayscale -> pad -> resize -> encode.

:func:`process_task` is the unit of work that ingest worker processes run. It is a pure function of its
task (raw bytes + record fields + :class:`PreprocessConfig`): the padding noise is seeded from the sample
key, so the output bytes do not depend on which worker ran it or in what order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from plankton_data.format.keys import pixel_sha256, sample_key
from plankton_data.ingest import ops
from plankton_data.ingest.adapters.base import Box, RawRecord, normalize_label
from plankton_data.ingest.limits import Limits, image_size

#: Bump when any step changes the output pixels; stored in every manifest row.
PREPROCESS_VERSION = "1"


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 256  # output side in px; 0 keeps the native (padded) size
    image_format: str = "jpg"  # "jpg" (fast to decode, ~4x smaller) or "png" (lossless)
    quality: int = 95  # JPEG quality
    seed: int = 0  # mixed with the sample key to seed the padding noise

    def encode_params(self) -> list[int]:
        if self.image_format == "jpg":
            return [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        return [cv2.IMWRITE_PNG_COMPRESSION, 6]


@dataclass(frozen=True)
class Task:
    """What a worker needs: the record (without its archive handle) and the bytes read by the parent.

    ``error`` is why the parent could not read the bytes (the member is over the size limit, the archive is
    damaged); the task then becomes a reject with that reason. ``limits`` bound the pixels decoded.
    """

    dataset: str
    record: RawRecord
    data: bytes
    config: PreprocessConfig
    error: str = ""
    limits: Limits = field(default_factory=Limits)


@dataclass
class Sample:
    """One processed sample: manifest fields (without shard location) plus the bytes to store."""

    row: dict
    image: bytes
    meta_json: bytes


@dataclass
class Failure:
    source: str
    reason: str
    label_raw: str = ""
    kind: str = "reject"
    extra: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=8)
def _config_fields(cfg: PreprocessConfig) -> dict:
    return asdict(cfg)


# One bit generator per thread, re-seeded per sample below (building a fresh one costs ~25 us); per thread
# because square_gray may run in threads (plankton-train predict), and a shared one would mix their streams.
_LOCAL = threading.local()


def _rng_for(key: str, seed: int) -> np.random.Generator:
    """A generator whose state is a pure function of ``(seed, key)``: output never depends on the worker."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    bitgen = getattr(_LOCAL, "bitgen", None)
    if bitgen is None:
        bitgen = _LOCAL.bitgen = np.random.PCG64(0)
    bitgen.state = {
        "bit_generator": "PCG64",
        "state": {"state": int.from_bytes(digest[:16], "little"), "inc": int.from_bytes(digest[16:32], "little") | 1},
        "has_uint32": 0,
        "uinteger": 0,
    }
    return np.random.Generator(bitgen)


def square_gray(img: np.ndarray, *, key: str, size: int, seed: int = 0) -> np.ndarray:
    """The pixels ingest stores for a decoded image: gray -> square on background-matched noise -> resize.

    ``img`` is ``H x W`` or ``H x W x C`` (as cv2 decodes); returns ``size x size`` uint8 (``size=0`` keeps the
    padded side). The padding noise is seeded from ``(seed, key)`` exactly as for a stored sample, so the same
    key always gives the same pixels; ingest passes the sample key, ``plankton-train predict`` the sha256 of the
    file. Dataset steps (legend removal, box crops) are not part of it: they come before, in :func:`process_task`.
    """
    return _square(ops.to_gray(img), key, size, seed)[0]


def _square(gray: np.ndarray, key: str, size: int, seed: int) -> tuple[np.ndarray, int, float]:
    """:func:`square_gray` on a gray image, plus the background ``(mode, std)`` it padded with."""
    mode, std = ops.edge_background(gray)
    square = ops.pad_to_square(gray, _rng_for(key, seed), background=(mode, std))
    return ops.resize_square(square, size), mode, std


def _finish(gray: np.ndarray, key: str, cfg: PreprocessConfig) -> tuple[np.ndarray, dict]:
    out, mode, std = _square(gray, key, cfg.size, cfg.seed)
    return out, {"pad_mode": mode, "pad_std": round(std, 3), "pixel_sha256": pixel_sha256(gray)}


def _make_sample(
    task: Task,
    key: str,
    source: str,
    label_raw: str,
    out: np.ndarray,
    orig: tuple[int, int],
    box: tuple[int, int, int, int] | None,
    steps: list[str],
    pad: dict,
    meta: dict,
) -> Sample:
    cfg, rec = task.config, task.record
    ok, buf = cv2.imencode(f".{cfg.image_format}", out, cfg.encode_params())
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise ValueError("encoding failed")
    image = buf.tobytes()
    fields = {
        "key": key,
        "dataset": task.dataset,
        "source": source,
        "label_raw": label_raw,
        "label": normalize_label(label_raw),
        "split": rec.split,
        "subset": rec.subset,
        "instrument": rec.instrument,
    }
    content = pad.pop("pixel_sha256")
    preprocess = {"version": PREPROCESS_VERSION, "steps": steps, **pad, **_config_fields(cfg)}
    row = dict(
        fields,
        orig_width=orig[0],
        orig_height=orig[1],
        width=out.shape[1],
        height=out.shape[0],
        crop_x0=box[0] if box else None,
        crop_y0=box[1] if box else None,
        crop_x1=box[2] if box else None,
        crop_y1=box[3] if box else None,
        image_format=cfg.image_format,
        image_sha256=hashlib.sha256(image).hexdigest(),
        pixel_sha256=content,
        # Exact integers (held in doubles by cv2, exact below 2**53): any subset's mean/std without decoding.
        pixel_sum=round(cv2.sumElems(out)[0]),
        pixel_sq_sum=round(cv2.norm(out, cv2.NORM_L2SQR)),
        preprocess=json.dumps(preprocess, sort_keys=True),
        meta=json.dumps(meta, sort_keys=True),
    )
    return Sample(row, image, json.dumps(fields, sort_keys=True).encode())


def worker_init() -> None:
    """Per worker process: one OpenCV thread. Parallelism comes from the processes; OpenCV's own thread
    pool would oversubscribe the cores (N workers x N threads) and slow everything down."""
    cv2.setNumThreads(1)


def process_batch(tasks: list[Task]) -> list[list[Sample | Failure]]:
    """:func:`process_task` over a batch: one inter-process round trip per batch, not per image."""
    return [process_task(t) for t in tasks]


def truncation(data: bytes) -> str | None:
    """Why ``data`` is a cut-off JPEG/PNG, or ``None``. Decoders often return the top part of a truncated
    file padded with gray instead of failing, so the end marker is checked explicitly."""
    tail = data.rstrip(b"\0\r\n ")
    if data[:2] == b"\xff\xd8" and not tail.endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-16:]:
        return "truncated PNG (no IEND chunk)"
    return None


def process_task(task: Task) -> list[Sample | Failure]:
    """All samples (one, or one per box) or failures for one record. Never raises: whatever one input does
    (bad bytes, a header declaring billions of pixels, an OpenCV error) makes it a reject with the reason."""
    rec = task.record
    if task.error:
        return [Failure(rec.source, task.error, rec.label_raw)]
    try:
        return _process(task)
    except Exception as exc:  # one bad input never stops the run
        return [Failure(rec.source, f"cannot process image: {one_line(exc)}", rec.label_raw)]


def one_line(exc: BaseException) -> str:
    """An exception as one short line (OpenCV's messages span lines and start with the source file)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, cv2.error) and " error: " in text:
        text = text.split(" error: ", 1)[1]
    return f"{type(exc).__name__}: {text}"[:300]


def _decode(task: Task) -> np.ndarray | Failure:
    """The task's image as cv2 decodes it (``H x W`` or ``H x W x C``), or why it cannot be had."""
    rec = task.record
    if rec.pixels is not None:  # bare pixels (an IFCB ROI): nothing to decode
        if too_big := task.limits.pixel_problem(rec.pixels.width, rec.pixels.height):
            return Failure(rec.source, too_big, rec.label_raw)
        return np.frombuffer(task.data, np.uint8).reshape(rec.pixels.height, rec.pixels.width)
    if reason := truncation(task.data):
        return Failure(rec.source, reason, rec.label_raw)
    header = image_size(task.data)  # before decoding: a header can claim more pixels than memory holds
    if header and (too_big := task.limits.pixel_problem(*header)):
        return Failure(rec.source, too_big, rec.label_raw)
    arr = np.frombuffer(task.data, np.uint8)
    try:
        img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED) if arr.size else None
    except cv2.error as exc:
        return Failure(rec.source, f"cannot decode image ({one_line(exc)})", rec.label_raw)
    if img is None or img.size == 0:
        return Failure(rec.source, "cannot decode image (corrupt, truncated or empty)", rec.label_raw)
    if too_big := task.limits.pixel_problem(img.shape[1], img.shape[0]):  # formats image_size does not read
        return Failure(rec.source, too_big, rec.label_raw)
    return img


def _process(task: Task) -> list[Sample | Failure]:
    rec = task.record
    img = _decode(task)
    if isinstance(img, Failure):
        return [img]
    gray = ops.to_gray(img)
    h, w = gray.shape
    if not rec.boxes:
        steps = ["grayscale"]
        if rec.step == "zooprocess_legend":
            gray = ops.remove_zooprocess_legend(gray)
            steps.insert(0, "zooprocess_legend")
        key = sample_key(task.dataset, rec.source)
        out, pad = _finish(gray, key, task.config)
        return [
            _make_sample(
                task, key, rec.source, rec.label_raw, out, (w, h), None, steps + ["pad_square", "resize"], pad, rec.meta
            )
        ]
    results: list[Sample | Failure] = []
    for k, box in zip(rec.meta.get("box_ids", range(len(rec.boxes))), rec.boxes, strict=True):
        results.append(_crop_sample(task, gray, k, box))
    return results


def _crop_sample(task: Task, gray: np.ndarray, k: int, box: Box) -> Sample | Failure:
    h, w = gray.shape
    source = f"{task.record.source}#box{k}"
    clipped = ops.clip_box((box.x0, box.y0, box.x1, box.y1), w, h)
    if clipped is None:
        return Failure(
            source, f"box {box.x0},{box.y0},{box.x1},{box.y1} is under 2 px or outside the {w}x{h} image", box.label_raw
        )
    key = sample_key(task.dataset, source)
    out, pad = _finish(ops.crop(gray, clipped), key, task.config)
    meta = dict(box.meta, clipped=clipped != (box.x0, box.y0, box.x1, box.y1))
    return _make_sample(
        task,
        key,
        source,
        box.label_raw,
        out,
        (w, h),
        clipped,
        ["box_crop", "grayscale", "pad_square", "resize"],
        pad,
        meta,
    )
