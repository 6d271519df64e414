"""Content-addressed image storage: bytes live on disk under their SHA-256, the state holds `ImageRef`s."""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import io
import os
import re
import stat
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
_SHA256 = re.compile(r"[0-9a-f]{64}")
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
    """Bytes of an input image sent as a data: URL or a base64 string (never a path: requests carry data).

    Base64 may contain line breaks (MIME style) and may lack its padding.
    """
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidImageError(f"{header[:60]!r}: a data: URL must be base64 (data:image/png;base64,...)")
        return _b64(payload)
    return _b64(value)


def data_url(data: bytes) -> str:
    """Image bytes as a data: URL, the way a request carries an input image."""
    mime, _, _ = inspect_image(data)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _b64(payload: str) -> bytes:
    compact = "".join(payload.split())
    if not compact:
        raise InvalidImageError("empty image data: send a data: URL or base64 image bytes")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        looks_like_path = payload.lstrip().startswith(("/", "~", ".", "file:")) or "\\" in payload[:200]
        hint = " (file paths are not accepted: send the image's bytes as a data: URL)" if looks_like_path else ""
        raise InvalidImageError(f"not a data: URL or base64 image data{hint}") from None


class ImageStore:
    """Images on disk at `root/ab/abcdef....png`, written once and atomically."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser()  # no IO here: async nodes build stores on the event loop

    def path_for(self, sha256: str, mime: str) -> Path:
        """Where the image with this hash lives in this store (computed, never taken from a reference)."""
        if not _SHA256.fullmatch(sha256):
            raise InvalidImageError(f"{sha256[:80]!r} is not a SHA-256 hex digest")
        ext = _EXT.get(mime)
        if ext is None:
            raise InvalidImageError(f"unsupported image type {mime[:40]!r}")
        return self.root.absolute() / sha256[:2] / f"{sha256}.{ext}"

    def put(self, data: bytes) -> ImageRef:
        """Store image bytes (validated) and return their reference."""
        mime, width, height = inspect_image(data)
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest, mime)
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
        """The bytes of a stored image, found by its hash in this store (`ref.path` is not trusted); checks
        that they still match the hash. Raises `InvalidImageError` (or `FileNotFoundError`) otherwise."""
        path = self.path_for(ref.sha256, ref.mime)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidImageError(f"stored image {path} is a symlink") from None
            raise
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise InvalidImageError(f"stored image {path} is not a regular file")
            data = fh.read()
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise InvalidImageError(f"stored image {path} no longer matches its hash")
        return data
