"""Image input for deployment: decoding, the one resize/normalise contract, and synthetic images.

The C++ example (``cpp/``) implements exactly the same steps (:func:`fit_to`: centre crop to the target
aspect ratio, bilinear resize with half-pixel centres computed in double precision, rounding half up to
uint8; then :func:`to_tensor`), so Python and C++ feed a model bit-identical uint8 pixels and their
logits can be compared. The steps are also what an INT8 calibration set goes through.

Decoding needs no imaging library: binary PPM/PGM (P6/P5) and 8-bit non-interlaced PNG are read here;
any other format (JPEG, ...) is read through Pillow when it happens to be installed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import EdgevitError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_SUFFIXES = (".ppm", ".pgm", ".pnm", ".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image file -> (H, W, 3) uint8."""
    path = Path(path)
    data = path.read_bytes()
    try:
        if data[:2] in (b"P5", b"P6"):
            return _decode_pnm(data)
        if data[:8] == PNG_SIGNATURE:
            return _decode_png(data)
    except (ValueError, IndexError, zlib.error, struct.error) as exc:
        raise EdgevitError(f"cannot decode {str(path)!r}: {exc}") from exc
    try:
        from PIL import Image
    except ImportError:
        raise EdgevitError(f"cannot read {str(path)!r}: edgevit decodes PPM (P6), PGM (P5) and PNG itself; "
                           "other formats need Pillow (pip install pillow)") from None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # Pillow raises its own error types for unreadable files
        raise EdgevitError(f"cannot decode {str(path)!r}: {exc}") from exc


def write_ppm(path: str | Path, image: np.ndarray) -> Path:
    """(H, W, 3) uint8 -> binary PPM (P6), the format the C++ example reads without a library."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    path = Path(path)
    path.write_bytes(b"P6\n%d %d\n255\n" % (image.shape[1], image.shape[0]) + image.tobytes())
    return path


def _decode_pnm(data: bytes) -> np.ndarray:
    tokens: list[bytes] = []
    pos = 2
    while len(tokens) < 3:  # width, height, maxval; '#' starts a comment up to the end of the line
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        tokens.append(data[pos:end])
        pos = end
    width, height, maxval = (int(t) for t in tokens)
    if maxval > 255:
        raise ValueError(f"16-bit PNM (maxval {maxval}) is not supported")
    channels = 3 if data[:2] == b"P6" else 1
    count = width * height * channels
    pixels = np.frombuffer(data, np.uint8, count, pos + 1).reshape(height, width, channels)
    if maxval != 255:
        pixels = np.floor(pixels.astype(np.float64) * 255.0 / maxval + 0.5).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(pixels, (height, width, 3)))


def _decode_png(data: bytes) -> np.ndarray:
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"only 8-bit non-interlaced grey/RGB(A) PNG is supported (depth {depth}, colour type "
                         f"{color}, interlace {interlace})")
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, 1 + width * channels)
    pixels = _unfilter_png(raw[:, 1:], raw[:, 0], channels).reshape(height, width, channels)
    rgb = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    return np.ascontiguousarray(rgb)


def _unfilter_png(rows: np.ndarray, filters: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth); arithmetic is modulo 256."""
    out = np.zeros(rows.shape, np.int32)
    prev = np.zeros(rows.shape[1], np.int32)
    for y, kind in enumerate(filters):
        line = rows[y].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 0xFF
        elif kind == 1:  # Sub: a running sum per byte position modulo bpp
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) & 0xFF
        elif kind in (3, 4):
            cur = line.copy()
            for x in range(len(cur)):  # Average and Paeth depend on the already decoded left neighbour
                a = int(cur[x - bpp]) if x >= bpp else 0
                b = int(prev[x])
                if kind == 3:
                    pred = (a + b) >> 1
                else:
                    c = int(prev[x - bpp]) if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (cur[x] + pred) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter {kind}")
        out[y] = prev = cur
    return out.astype(np.uint8)


def crop_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred (top, left, h, w) box with the aspect ratio of ``size`` (integer arithmetic,
    the same in C++)."""
    th, tw = size
    if width * th > height * tw:  # too wide: keep the full height
        h, w = height, max(1, (height * tw) // th)
    else:
        h, w = max(1, (width * th) // tw), width
    return (height - h) // 2, (width - w) // 2, h, w


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 -> (h, w, C) uint8: bilinear with half-pixel centres (as OpenCV's INTER_LINEAR and
    ``F.interpolate(align_corners=False, antialias=False)``), in float64, rounded half up."""
    src = image.astype(np.float64)
    ys, y0, y1 = _taps(image.shape[0], size[0])
    xs, x0, x1 = _taps(image.shape[1], size[1])
    fy, fx = ys[:, None, None], xs[None, :, None]
    top = (1.0 - fx) * src[y0][:, x0] + fx * src[y0][:, x1]
    bottom = (1.0 - fx) * src[y1][:, x0] + fx * src[y1][:, x1]
    out = (1.0 - fy) * top + fy * bottom
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.clip((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0.0, src - 1)
    lo = np.floor(pos).astype(np.int64)
    return pos - lo, lo, np.minimum(lo + 1, src - 1)


def fit_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop to the aspect ratio of ``size`` (no distortion), then resize to ``size``."""
    top, left, h, w = crop_box(image.shape[0], image.shape[1], size)
    cropped = image[top:top + h, left:left + w]
    return cropped if cropped.shape[:2] == tuple(size) else resize_bilinear(cropped, size)


def to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 ``(x / 255 - mean) / std``: what every exported
    model without embedded preprocessing takes."""
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def synthetic_images(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(count, H, W, 3) uint8 deterministic image-like inputs: smooth colour fields (upsampled 4x4..16x16
    noise) plus mild pixel noise, so activations have natural-image-like spatial correlation rather than
    the white noise of :func:`edgevit.verify.seeded_inputs`."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, *size, 3), np.uint8)
    for i in range(count):
        cells = int(rng.integers(4, 17))
        coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        smooth = resize_bilinear(coarse, size).astype(np.float64)
        out[i] = np.clip(smooth + rng.normal(0.0, 8.0, smooth.shape), 0, 255).astype(np.uint8)
    return out


def image_files(directory: str | Path) -> list[Path]:
    """Image files directly in ``directory``, sorted by name (a reproducible calibration order)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EdgevitError(f"{str(directory)!r} is not a directory of images")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdgevitError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(directory)!r}")
    return files
