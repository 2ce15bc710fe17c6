"""edgevit.images: decoders against straightforward reference encoders, the resize against PyTorch's
bilinear interpolation, and the preprocessing contract shared with the C++ example."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevit.errors import EdgevitError
from edgevit.images import (
    crop_box,
    fit_to,
    image_files,
    read_image,
    resize_bilinear,
    synthetic_images,
    to_tensor,
    write_ppm,
)


def _image(h: int = 7, w: int = 9, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_ppm_round_trip_with_comments_and_pgm(tmp_path: Path) -> None:
    img = _image()
    assert np.array_equal(read_image(write_ppm(tmp_path / "a.ppm", img)), img)
    (tmp_path / "c.ppm").write_bytes(b"P6\n# a comment\n9 7\n# another\n255\n" + img.tobytes())
    assert np.array_equal(read_image(tmp_path / "c.ppm"), img)
    grey = img[..., 0]
    (tmp_path / "g.pgm").write_bytes(b"P5 9 7 255\n" + grey.tobytes())
    assert np.array_equal(read_image(tmp_path / "g.pgm"), np.repeat(grey[..., None], 3, axis=2))
    (tmp_path / "m.ppm").write_bytes(b"P6 1 1 15\n" + bytes([15, 0, 7]))  # maxval 15 scaled to 0..255
    assert read_image(tmp_path / "m.ppm").tolist() == [[[255, 0, 119]]]


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _encode_png(img: np.ndarray, color: int) -> bytes:
    """Reference encoder: every row with a different filter (0..4), pixel by pixel as in the PNG spec."""
    h, w, ch = img.shape
    bpp, raw, prev = ch, b"", [0] * (w * ch)
    for y in range(h):
        kind, line = y % 5, [int(v) for v in img[y].reshape(-1)]
        out = []
        for x, v in enumerate(line):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
            out.append((v - pred) % 256)
        raw += bytes([kind, *out])
        prev = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    half = len(raw) // 2  # two IDAT chunks
    comp = zlib.compress(raw)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", comp[:half]) + chunk(b"IDAT", comp[half:])
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("color,channels", [(2, 3), (6, 4), (0, 1), (4, 2)])
def test_png_decoder_matches_a_reference_encoder(tmp_path: Path, color: int, channels: int) -> None:
    img = np.random.default_rng(color).integers(0, 256, (11, 6, channels), dtype=np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(_encode_png(img, color))
    expected = img[..., :3] if channels >= 3 else np.repeat(img[..., :1], 3, axis=2)
    assert np.array_equal(read_image(path), expected)


def test_16_bit_png_is_refused_not_clipped(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 1, 1, 16, 0, 0, 0, 0)  # 1x1 grey, 16 bits per sample
    raw = zlib.compress(bytes([0, 0x12, 0x34]))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    (tmp_path / "g16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw)
                                       + chunk(b"IEND", b""))
    with pytest.raises(EdgevitError, match="16-bit"):
        read_image(tmp_path / "g16.png")


def test_unsupported_files_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(EdgevitError):
        read_image(tmp_path / "x.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgevitError, match="no images"):
        image_files(empty)
    with pytest.raises(EdgevitError, match="not a directory"):
        image_files(tmp_path / "x.jpg")


@pytest.mark.parametrize("src,dst", [((7, 9), (16, 5)), ((90, 120), (64, 64)), ((31, 17), (31, 17))])
def test_resize_is_torch_bilinear_half_pixel(src: tuple[int, int], dst: tuple[int, int]) -> None:
    img = _image(*src, seed=src[0])
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].double(), size=dst, mode="bilinear",
                        align_corners=False, antialias=False)[0].permute(1, 2, 0).numpy()
    ours = resize_bilinear(img, dst).astype(np.float64)
    assert np.abs(ours - ref).max() <= 0.5 + 1e-9  # rounding only


def test_crop_box_keeps_the_target_aspect_ratio() -> None:
    assert crop_box(90, 120, (64, 64)) == (0, 15, 90, 90)
    assert crop_box(120, 90, (64, 64)) == (15, 0, 90, 90)
    assert crop_box(100, 100, (64, 96)) == (17, 0, 66, 100)
    assert fit_to(_image(90, 120), (64, 64)).shape == (64, 64, 3)
    img = _image(64, 64)
    assert np.array_equal(fit_to(img, (64, 64)), img)


def test_to_tensor_is_the_normalisation_every_model_expects() -> None:
    imgs = synthetic_images(2, (8, 6), seed=1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = to_tensor(imgs, mean, std)
    ref = (torch.from_numpy(imgs).permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean)[:, None, None]) \
        / torch.tensor(std)[:, None, None]
    assert x.dtype == np.float32 and x.shape == (2, 3, 8, 6)
    assert np.abs(x - ref.numpy()).max() < 1e-6


def test_synthetic_images_are_deterministic_and_varied() -> None:
    a, b = synthetic_images(4, (32, 40), seed=3), synthetic_images(4, (32, 40), seed=3)
    assert a.dtype == np.uint8 and a.shape == (4, 32, 40, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, synthetic_images(4, (32, 40), seed=4))
    assert a.std() > 30 and len({img.tobytes() for img in a}) == 4
