"""Download weight files into Detectron2's cache so that a half-written or broken file never
sits under the name Detectron2 (and resbackbones) will read.

Why not iopath's own ``PathManager.get_local_path``: it streams straight into the cached name,
so an interrupted download leaves a truncated file that every later run reads and fails on, and
it keeps whatever the server sent. Here a file is written under a temporary name in the cache
folder, its length is checked against ``Content-Length``, an optional ``validate`` callback must
accept it (e.g. "loads into the model, every tensor accounted for"), and only then is it renamed
to its final name. The final name is the one iopath uses for the same URL
(``<cache>/<url path>``, cache = ``$FVCORE_CACHE`` or ``~/.torch/iopath_cache``), so Detectron2's
``detectron2://...`` names find it afterwards, also offline.

The model-zoo base URL can point at a mirror (or a test server) through
``$RESBACKBONES_MODEL_ZOO_URL`` or the ``base_url`` argument; the file is cached under
Detectron2's name all the same.
"""
from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.request
import uuid
from typing import Callable, Optional

from resbackbones.checkpoint import WeightsUnavailableError
from resbackbones.checkpoint.checkpointer import DETECTRON2_URL_PREFIX, iopath_cache_file

__all__ = [
    "DownloadError",
    "MODEL_ZOO_URL_ENV",
    "download_file",
    "fetch_model_zoo_file",
    "model_zoo_cache_path",
    "model_zoo_url",
]

logger = logging.getLogger(__name__)

# Environment variable with a base URL that replaces Detectron2's model-zoo prefix.
MODEL_ZOO_URL_ENV = "RESBACKBONES_MODEL_ZOO_URL"
_CHUNK_BYTES = 1 << 20


class DownloadError(WeightsUnavailableError):
    """A download failed or gave an unusable file; nothing was left under the final name.

    Attributes:
        url: what was requested.
        destination: the cache path the file belongs at (where to copy it by hand).
    """

    def __init__(self, message: str, url: str, destination: str) -> None:
        super().__init__(message)
        self.url = url
        self.destination = destination


def model_zoo_url(name: str, base_url: Optional[str] = None) -> str:
    """The URL of a Detectron2 model-zoo file.

    Args:
        name: the path under the model zoo, e.g. ``"COCO-InstanceSegmentation/
            mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"`` (``detectron2://`` allowed).
        base_url: replaces Detectron2's prefix; default ``$RESBACKBONES_MODEL_ZOO_URL``, else
            ``https://dl.fbaipublicfiles.com/detectron2/``.

    Returns:
        ``base_url`` joined with ``name``.
    """
    base = base_url or os.environ.get(MODEL_ZOO_URL_ENV) or DETECTRON2_URL_PREFIX
    return base.rstrip("/") + "/" + _model_zoo_name(name)


def model_zoo_cache_path(name: str) -> str:
    """Where Detectron2 caches (and looks for) a model-zoo file: iopath's path for its URL."""
    return iopath_cache_file(DETECTRON2_URL_PREFIX + _model_zoo_name(name))


def _model_zoo_name(name: str) -> str:
    return name[len("detectron2://"):] if name.startswith("detectron2://") else name.lstrip("/")


def fetch_model_zoo_file(
    name: str,
    validate: Optional[Callable[[str], None]] = None,
    base_url: Optional[str] = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> str:
    """A Detectron2 model-zoo file in the local cache, downloaded (and validated) on first use.

    A file already under the cache name is returned without any request; it got there only
    complete and validated (or was put there by hand, in which case loading it checks it).

    Args:
        name: model-zoo path (see :func:`model_zoo_url`).
        validate: called with the downloaded file's temporary path; raise to refuse it.
        base_url: mirror of the model zoo (default ``$RESBACKBONES_MODEL_ZOO_URL``, else
            Detectron2's).
        progress: show a tqdm progress bar.
        timeout: seconds without data before the download is abandoned.

    Returns:
        The local path.

    Raises:
        DownloadError: offline, HTTP error, short read or refused by ``validate``; the message
            names the URL and the path to copy the file to.
    """
    destination = model_zoo_cache_path(name)
    if os.path.isfile(destination):
        return destination
    url = model_zoo_url(name, base_url)
    canonical = DETECTRON2_URL_PREFIX + _model_zoo_name(name)
    return download_file(url, destination, validate=validate, progress=progress, timeout=timeout,
                         also_at=canonical if canonical != url else None)


def download_file(
    url: str,
    destination: str,
    validate: Optional[Callable[[str], None]] = None,
    progress: bool = True,
    timeout: float = 60.0,
    also_at: Optional[str] = None,
) -> str:
    """Download ``url`` to ``destination`` through a temporary file in the same folder.

    Args:
        url: http(s) URL.
        destination: final local path; written only once the file is complete and valid.
        validate: called with the temporary path (its extension is ``destination``'s); raising
            refuses the file, which is then deleted.
        progress: show a tqdm progress bar (bytes).
        timeout: socket timeout in seconds (connect and each read).
        also_at: another URL of the same file, named in error messages (the original one when
            ``url`` is a mirror).

    Returns:
        ``destination``.

    Raises:
        DownloadError: the download failed, was cut short or the file was refused.
    """
    from iopath.common.file_io import file_lock

    directory = os.path.dirname(os.path.abspath(destination))
    os.makedirs(directory, exist_ok=True)
    stem, extension = os.path.splitext(os.path.basename(destination))
    # Same folder (so the rename is atomic), hidden, and the real extension (so a validator
    # that picks a reader by extension reads it as what it is).
    temporary = os.path.join(directory, f".{stem}.download-{uuid.uuid4().hex[:8]}{extension}")
    sources = f"{url}" + (f" (also at {also_at})" if also_at else "")
    where = (f"Download it on a machine with network access and copy it to {destination} "
             f"(or set {MODEL_ZOO_URL_ENV} to a mirror).")
    with file_lock(destination):  # two processes never download the same file at once
        if os.path.isfile(destination):
            return destination
        try:
            _stream_to(url, temporary, timeout, progress)
        except (OSError, http.client.HTTPException, ValueError) as error:
            _remove(temporary)
            raise DownloadError(f"Could not download {sources}: {_describe(error)}. "
                                f"Offline? {where}", url, destination) from error
        except BaseException:  # Ctrl+C: leave nothing behind either
            _remove(temporary)
            raise
        try:
            if validate is not None:
                validate(temporary)
        except Exception as error:
            _remove(temporary)
            raise DownloadError(f"The file downloaded from {url} is not usable and was deleted: "
                                f"{error}", url, destination) from error
        os.replace(temporary, destination)
    logger.info(f"Downloaded {url} to {destination}")
    return destination


def _stream_to(url: str, path: str, timeout: float, progress: bool) -> None:
    """Write the body of ``url`` to ``path``; raise ``ValueError`` if it is shorter or longer
    than the server's ``Content-Length``."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "resbackbones"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with open(path, "wb") as file, tqdm(
                total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                desc=os.path.basename(url), disable=not progress) as bar:
            while True:
                chunk = response.read(_CHUNK_BYTES)
                if not chunk:
                    break
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            file.flush()
            os.fsync(file.fileno())
    if expected is not None and received != expected:
        raise ValueError(f"the connection ended after {received} of {expected} bytes")
    if received == 0:
        raise ValueError("the server sent an empty file")


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"{type(error.reason).__name__}: {error.reason}"
    return f"{type(error).__name__}: {error}"


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
