"""Access to the Hugging Face hub for encoder inits: fail fast and in one line when it cannot be reached.

Inits that need the hub (``imagenet``, ``imagenet-supervised``, ``timm:`` without ``weights_file``, ``hf-hub:``)
first look in the local hub cache. If the files are not there and the hub is unreachable (``HF_HUB_OFFLINE=1``,
or ``HF_ENDPOINT`` does not answer a ``HEAD`` request within :data:`HUB_PROBE_TIMEOUT` s), :func:`check` raises
a one-line :class:`~plankton_train.errors.ModelInitError` naming the repo and how to pass a local copy, instead
of ``huggingface_hub``'s retry loop (about 23 s per file, a minute for one timm model). Cached files load with
the hub treated as offline (:func:`offline`).
"""

from __future__ import annotations

import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import timm

from plankton_train.errors import ModelInitError, one_line

#: Seconds to wait for the hub endpoint to answer a HEAD request before calling it unreachable.
HUB_PROBE_TIMEOUT = 3.0


def weight_files(filename: str = "") -> tuple[str, ...]:
    """The files timm tries for hub weights ``filename``, in order (a ``.safetensors`` twin first)."""
    filename = filename or "pytorch_model.bin"
    if filename == "pytorch_model.bin":
        return "model.safetensors", filename
    if filename.endswith(".bin"):
        return filename[:-4] + ".safetensors", filename
    return (filename,)


def unreachable() -> str:
    """Why the Hugging Face hub cannot be reached (``""`` if it can).

    ``HF_HUB_OFFLINE``, else one ``HEAD`` request to ``HF_ENDPOINT`` (through the ``https_proxy`` /
    ``http_proxy`` the environment names, as the hub client does), bounded by :data:`HUB_PROBE_TIMEOUT` seconds,
    name resolution included. Any HTTP answer counts as reachable except a proxy's 407 or a 5xx (a proxy that
    cannot reach the hub answers 502/503/504). The probe only asks for the endpoint's root and sends no token.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline (HF_HUB_OFFLINE is set)"
    endpoint = constants.ENDPOINT.rstrip("/")
    proxy = urllib.request.getproxies().get(urlsplit(endpoint).scheme)
    via = f" via proxy {proxy}" if proxy and not urllib.request.proxy_bypass(urlsplit(endpoint).hostname or "") else ""
    result = [f"offline ({endpoint}{via} did not answer within {HUB_PROBE_TIMEOUT:g} s)"]

    def probe() -> None:
        request = urllib.request.Request(endpoint + "/", method="HEAD")
        context = ssl._create_unverified_context()  # reachability only: no CA bundle mismatch can hide the hub
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        try:
            opener.open(request, timeout=HUB_PROBE_TIMEOUT).close()
            result[0] = ""
        except urllib.error.HTTPError as exc:
            result[0] = (
                f"offline ({endpoint}{via} answered HTTP {exc.code})" if exc.code == 407 or exc.code >= 500 else ""
            )
        except (OSError, ValueError) as exc:  # URLError, timeouts, TLS and connection errors
            reason = getattr(exc, "reason", exc)
            if not isinstance(reason, TimeoutError):  # a timeout keeps the "did not answer" message
                result[0] = f"offline ({endpoint}{via}: {getattr(reason, 'strerror', None) or reason})"

    thread = threading.Thread(target=probe, daemon=True)  # name resolution has no timeout of its own
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT + 0.5)
    return result[0]


def check(init: str, hub_id: str, needs: list[tuple[str, ...]], local: str) -> bool:
    """Make sure the files of hub repo ``hub_id`` (``ORG/NAME[@REV]``) can be had, without waiting for retries.

    ``needs``: for each file, the names that would do (one is enough). Returns True if they are all in the
    local cache and the hub is unreachable (load them with the hub offline), False if the hub is reachable.
    Raises a one-line :class:`ModelInitError` if something is missing and the hub is unreachable.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    repo, _, rev = hub_id.partition("@")
    try:
        cached = all(
            any(isinstance(try_to_load_from_cache(repo, f, revision=rev or None), str) for f in names)
            for names in needs
        )
    except ValueError:  # a malformed repo id: let the hub client say so
        cached = False
    why = unreachable()
    if not why:
        return False
    if cached:
        return True
    raise ModelInitError(
        f"cannot load {init!r} ({hub_id} on the Hugging Face hub): {why} and it is not in the local cache "
        f"{constants.HF_HUB_CACHE}; pass a local copy: {local}"
    )


def local_copy_hint(hub_id: str, weights_file: bool) -> str:
    """How to pass a local copy of hub repo ``hub_id`` instead (the end of :func:`check`'s message)."""
    repo = hub_id.partition("@")[0]
    folder = f"`hf download {repo} --local-dir DIR` on a connected machine, then --init DIR"
    return f"--weights-file FILE (the repo's model.safetensors), or {folder}" if weights_file else folder


@contextmanager
def offline(on: bool) -> Iterator[None]:
    """Treat the hub as offline (``HF_HUB_OFFLINE``) meanwhile: cached files load without network retries."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def config_file(init: str, hub_id: str, pretrained: bool) -> tuple[Path, bool]:
    """``config.json`` of hub repo ``hub_id`` and whether its files must be loaded offline."""
    from huggingface_hub import hf_hub_download

    needs: list[tuple[str, ...]] = [("config.json",), weight_files()] if pretrained else [("config.json",)]
    cached_only = check(init, hub_id, needs, local_copy_hint(hub_id, weights_file=False))
    repo, _, rev = hub_id.partition("@")
    try:
        with offline(cached_only):
            return Path(hf_hub_download(repo, "config.json", revision=rev or None)), cached_only
    except Exception as exc:  # unknown repo, auth: huggingface_hub raises many types
        raise ModelInitError(f"cannot fetch config.json of hf-hub:{hub_id}: {one_line(exc)}") from exc


def timm_tag_offline(init: str, name: str) -> bool:
    """For a timm tag whose weights come from the hub: :func:`check` on its ``hf_hub_id``."""
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except (RuntimeError, ValueError, KeyError):
        cfg = None  # unknown name or tag: create_model says so
    if cfg is None or not cfg.hf_hub_id:
        return False
    return check(
        init,
        cfg.hf_hub_id,
        [weight_files(cfg.hf_hub_filename or "")],
        local_copy_hint(cfg.hf_hub_id, weights_file=True),
    )
