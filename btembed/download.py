"""One file over HTTP(S) into a .part file: resumable (HTTP Range), retried, size-checked, with a progress bar.

The client is httpx (the one huggingface_hub depends on); it honours HTTP(S)_PROXY / NO_PROXY from the
environment. What the bytes are (sha256, format) is checked by the caller, btembed.sources.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ModelError

try:  # huggingface_hub 2.x depends on httpx2, 1.x on httpx: the same client API under two names
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    import httpx

ATTEMPTS = 3  # per call; a file still incomplete after them keeps its .part for the next call
BACKOFF_SECONDS = 0.5
TIMEOUT = httpx.Timeout(60.0, connect=20.0)
MIRROR_VARIABLE = "BTEMBED_MODEL_MIRROR"


class DownloadError(ModelError):
    """A download that failed or delivered something other than the file (error page, wrong size)."""

    transient = False  # worth asking again within the same call (a server error)
    status = ""  # the HTTP status line, for an error raised on one


def mirrored(url: str) -> str:
    """The URL with scheme and host replaced by $BTEMBED_MODEL_MIRROR (http://HOST[:PORT][/PREFIX]), if set."""
    mirror = os.environ.get(MIRROR_VARIABLE, "").strip().rstrip("/")
    if not mirror:
        return url
    if urlsplit(mirror).scheme not in ("http", "https") or not urlsplit(mirror).netloc:
        raise DownloadError(f"{MIRROR_VARIABLE}={mirror!r} is not an http(s)://HOST[:PORT][/PREFIX] URL; fix or "
                            "unset it")
    parts = urlsplit(url)
    return mirror + parts.path + (f"?{parts.query}" if parts.query else "")


def _looks_like_html(content_type: str, head: bytes) -> bool:
    """An error or login page served in place of a binary file."""
    start = head.lstrip()[:15].lower()
    return content_type.split(";")[0].strip().lower() == "text/html" or start.startswith((b"<!doctype", b"<html"))


def _status_error(url: str, response) -> DownloadError:
    """The one-line refusal for an HTTP error status."""
    reason = response.reason_phrase or "error"
    error = DownloadError(f"{url} answered HTTP {response.status_code} {reason}; check the URL (or "
                          f"{MIRROR_VARIABLE}) or try again later")
    error.transient = response.status_code >= 500
    error.status = f"HTTP {response.status_code} {reason}"
    return error


def _attempt(client, url: str, part: Path, size: int | None, bar) -> tuple[int, int | None]:
    """One GET resuming from part's size; returns (bytes on disk, total the server announced or None)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset and size == offset:
            return offset, size  # the .part is already complete
        if response.status_code >= 400:
            raise _status_error(url, response)
        if offset and response.status_code != 206:
            offset = 0  # the server ignored the Range: start over rather than append the file to itself
        length = response.headers.get("content-length")
        total = offset + int(length) if length and length.isdigit() else None
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url} offers {total:,} bytes but the registry pins {size:,}: it is not the "
                                "file the registry describes; nothing was kept")
        chunks = response.iter_bytes()  # as received: a drop loses nothing already read
        first = next(chunks, b"")
        if offset == 0 and _looks_like_html(response.headers.get("content-type", ""), first):
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url} sent a web page (HTML), not the weights file; the link may have moved or "
                                "need a login; nothing was kept")
        bar.reset(total=total or size)
        bar.update(offset)
        with open(part, "ab" if offset else "wb") as f:
            for chunk in _prepend(first, chunks):
                f.write(chunk)
                bar.update(len(chunk))
    return part.stat().st_size, total


def _prepend(first: bytes, rest):
    """The first chunk (read to sniff for HTML) followed by the rest of the body."""
    yield first
    yield from rest


def download(url: str, part: Path, *, size: int | None = None, label: str = "") -> Path:
    """Fetch url into part (resuming what part already holds); returns part once it holds the whole body."""
    from tqdm.auto import tqdm

    part.parent.mkdir(parents=True, exist_ok=True)
    best = part.stat().st_size if part.exists() else 0
    stuck, last = False, None
    with httpx.Client(follow_redirects=True, timeout=TIMEOUT, trust_env=True) as client, \
            tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, disable=None,
                 desc=label or Path(urlsplit(url).path).name, leave=False) as bar:
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(BACKOFF_SECONDS * attempt)
            ended = True  # the server answered and ended the body (rather than the network failing)
            try:
                have, total = _attempt(client, url, part, size, bar)
                if (total is None or have == total) and (size is None or have == size):
                    return part
                last = f"the body ended at {have:,} of {total or size:,} bytes"
            except DownloadError as e:
                if not e.transient:
                    raise  # a 4xx, an error page or a wrong size does not get better by asking again
                last, have, ended = e.status, part.stat().st_size if part.exists() else 0, False
            except httpx.HTTPError as e:
                last, have = f"{type(e).__name__}: {e}", part.stat().st_size if part.exists() else 0
                ended = isinstance(e, httpx.RemoteProtocolError)
            # A server that keeps ending the body with no new bytes is sending a short file: a drop or a timeout
            # is not, and keeps what earlier calls downloaded.
            stuck, best = ended and have <= best, max(best, have)
    if stuck:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url} keeps sending an incomplete file ({last}) after {ATTEMPTS} attempts; "
                            "nothing was kept")
    where = f"; {part.stat().st_size:,} bytes are kept in {part} and the next try resumes there" \
        if part.exists() and part.stat().st_size else ""
    raise DownloadError(f"the download of {url} failed after {ATTEMPTS} attempts ({last}){where}")
