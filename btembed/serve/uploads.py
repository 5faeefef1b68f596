"""Upload limits: bytes are capped before the body is parsed, pixels before anything is decoded."""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields around the file


@dataclass(frozen=True)
class Limits:
    """How big an uploaded query photo may be."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


class UploadRejected(Exception):
    """An upload refused with an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def open_checked(data: bytes, limits: Limits) -> Image.Image:
    """The uploaded bytes as a decoded image, after the size checks (UploadRejected otherwise)."""
    if len(data) > limits.max_bytes:
        raise UploadRejected(413, f"the photo is {_mb(len(data))}; the limit is {_mb(limits.max_bytes)} "
                                  "(btembed serve --max-upload-mb)")
    if not data:
        raise UploadRejected(422, "the upload is empty; send an image file in the field 'image'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only: nothing is decoded yet
            w, h = image.size
            if w * h > limits.max_pixels:
                raise UploadRejected(422, f"the photo is {w}x{h} = {w * h / 1e6:.1f} MP; the limit is "
                                          f"{limits.max_pixels / 1e6:g} MP (btembed serve --max-megapixels)")
            image.load()
            return image
    except UploadRejected:
        raise
    except Image.DecompressionBombError:
        raise UploadRejected(422, f"the photo has more pixels than any photo should (a decompression bomb?); the "
                                  f"limit is {limits.max_pixels / 1e6:g} MP (btembed serve --max-megapixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise UploadRejected(422, "the upload is not an image btembed can read (JPEG, PNG, WebP, GIF, TIFF, ...)")


class BodyCap:
    """ASGI middleware: a request body over the cap gets 413 before any parser holds it (Content-Length first,
    then counting what arrives, for bodies sent without one)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes + FORM_OVERHEAD

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)

    async def _refuse(self, send):
        text = json.dumps({"error": f"the upload is over the {_mb(self.max_bytes - FORM_OVERHEAD)} limit "
                                    "(btembed serve --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(text)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": text})
