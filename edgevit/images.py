"""Image input for deployment: decoding, the one resize/normalise contract, and synthetic images.

The C++ example (``cpp/``) implements exactly the same steps (:func:`fit_to`: centre crop to the target
aspect ratio, bilinear resize with half-pixel centres computed in double precision, rounding half up to
uint8; then :func:`to_tensor`), so Python and C++ feed a model bit-identical uint8 pixels and their
logits can be compared. The steps are also what an INT8 calibration set goes through.

Decoding is Pillow's (every common format); :func:`write_ppm` writes the PPM the C++ example reads without
an imaging library.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import EdgevitError

IMAGE_SUFFIXES = (".ppm", ".pgm", ".pnm", ".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image(path: str | Path) -> np.ndarray:
    """An image file (PNG, JPEG, PPM/PGM, BMP, WebP, ...) -> (H, W, 3) uint8 RGB, decoded by Pillow.

    Grey images are repeated to three channels and alpha is dropped (not composited); EXIF orientation is
    not applied. 16-bit and float images are refused rather than clipped to 8 bits.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # convert("RGB") would clip, not scale
                raise EdgevitError(f"{str(path)!r} is a {im.mode} (16-bit or float) image; edgevit reads 8-bit "
                                   "images, convert it first")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # Pillow's decode errors
        raise EdgevitError(f"cannot decode {str(path)!r} as an image: {exc}") from exc


def write_ppm(path: str | Path, image: np.ndarray) -> Path:
    """(H, W, 3) uint8 -> binary PPM (P6), the format the C++ example reads without a library."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    path = Path(path)
    path.write_bytes(b"P6\n%d %d\n255\n" % (image.shape[1], image.shape[0]) + image.tobytes())
    return path


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
