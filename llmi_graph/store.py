"""Content-addressed image storage: bytes live on disk under their SHA-256, the state holds `ImageRef`s."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import tempfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from llmi_graph.state import ImageRef

MAX_IMAGE_PIXELS = 64_000_000
_MIME = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}
_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif", "image/bmp": "bmp"}


class InvalidImageError(ValueError):
    """Bytes that are not an image we accept."""


def inspect_image(data: bytes) -> tuple[str, int, int]:
    """Return (mime, width, height) of encoded image bytes, or raise `InvalidImageError` with the reason."""
    if not data:
        raise InvalidImageError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidImageError(f"{width}x{height} is over the {MAX_IMAGE_PIXELS:,}-pixel limit")
            img.verify()
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"not a readable image ({exc})") from exc
    mime = _MIME.get(fmt or "")
    if mime is None:
        raise InvalidImageError(f"unsupported image format {fmt}; use PNG, JPEG, WebP, GIF or BMP")
    return mime, width, height


def decode_image_input(value: str) -> bytes:
    """Bytes of an input image given as a file path, a data: URL or a base64 string."""
    if value.startswith("data:"):
        _, _, payload = value.partition(",")
        return _b64(payload)
    path = Path(value).expanduser()
    if len(value) < 4096 and path.is_file():
        return path.read_bytes()
    if len(value) > 256 and "/" not in value[:64]:
        return _b64(value)
    raise InvalidImageError(f"{value[:80]!r} is not an existing file, a data: URL or base64 image data")


def _b64(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"invalid base64 image data ({exc})") from exc


class ImageStore:
    """Images on disk at `root/ab/abcdef....png`, written once and atomically."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser()  # no IO here: async nodes build stores on the event loop

    def put(self, data: bytes) -> ImageRef:
        """Store image bytes (validated) and return their reference."""
        mime, width, height = inspect_image(data)
        digest = hashlib.sha256(data).hexdigest()
        path = self.root.absolute() / digest[:2] / f"{digest}.{_EXT[mime]}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return ImageRef(sha256=digest, path=str(path), mime=mime, width=width, height=height)

    def get(self, ref: ImageRef) -> bytes:
        """The bytes of a stored image; checks they still match their hash."""
        data = Path(ref.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise InvalidImageError(f"stored image {ref.path} no longer matches its hash")
        return data
