"""Tests for vpr_ros.io.image_codec: exact round trips, layouts, message flavours, errors, fuzzing."""

from __future__ import annotations

import array
import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import requires_rclpy
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from rosbags.typesys import Stores, get_typestore

from vpr_ros.io.image_codec import (
    MAX_DECODED_PIXELS,
    CompressedFields,
    ImageConversionError,
    ImageFields,
    compressed_to_rgb,
    image_to_rgb,
    message_to_rgb,
    rgb_to_compressed_fields,
    rgb_to_image_fields,
    to_compressed_msg,
    to_image_msg,
)

# encoding -> bytes per pixel, for the encodings that round-trip exactly; the aliases are read the
# way cv_bridge reads them.
BPP = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2}
BPP |= {"rgb16": 6, "bgr16": 6, "rgba16": 8, "bgra16": 8}
BPP |= {"8UC1": 1, "8UC3": 3, "8UC4": 4, "16UC1": 2}
ENCODINGS = list(BPP)
MONO = {"mono8", "mono16", "8UC1", "16UC1"}

# Camera layouts, lossy: encoding -> (bytes per pixel in a buffer row, the block of pixels that
# shares chroma, buffer rows per image row: nv12/nv21 add a half-height chroma plane).
PATTERNS = ("rggb", "bggr", "gbrg", "grbg")
LAYOUT = {name: (bpp, (1, 1), 1.0) for name, bpp in BPP.items()}
LAYOUT |= {f"bayer_{pattern}{bits}": (bits // 8, (1, 1), 1.0) for bits in (8, 16) for pattern in PATTERNS}
LAYOUT |= {name: (2, (1, 2), 1.0) for name in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")}
LAYOUT |= {name: (1, (2, 2), 1.5) for name in ("nv12", "nv21")}
ALL = list(LAYOUT)
SIXTEEN_BIT = {"mono16", "16UC1", "rgb16", "bgr16", "rgba16", "bgra16"} | {f"bayer_{p}16" for p in PATTERNS}

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
RB_IMAGE = TYPESTORE.types["sensor_msgs/msg/Image"]
RB_COMPRESSED = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
RB_HEADER = TYPESTORE.types["std_msgs/msg/Header"](
    stamp=TYPESTORE.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="camera"
)


def noise(height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    """Random RGB image: any channel mix-up or shear shows up as a mismatch."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth(height: int = 32, width: int = 48) -> np.ndarray:
    """Gradient image that JPEG reproduces closely."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 5, y * 7, 255 - x * 2 - y * 3], axis=-1).astype(np.uint8)


def scene(height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth like a camera image (periods of ~40-100 px), different in each channel: demosaicing and
    chroma subsampling lose little, while a wrong Bayer pattern or byte order mixes channels."""
    y, x = np.mgrid[0:height, 0:width] / 8.0
    channels = [
        128 + 100 * np.sin(x * 0.5 + 0.3),
        128 + 90 * np.cos(y * 0.6),
        128 + 110 * np.sin((x + y) * 0.35),
    ]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def grey3(rgb: np.ndarray) -> np.ndarray:
    """What a mono encoding gives back: BT.601 luma replicated to three channels."""
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def expected_after(rgb: np.ndarray, encoding: str) -> np.ndarray:
    return grey3(rgb) if encoding in MONO else rgb


def assert_rgb(out: np.ndarray, expected: np.ndarray) -> None:
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def abs_error(out: np.ndarray, expected: np.ndarray) -> np.ndarray:
    assert out.shape == expected.shape and out.dtype == np.uint8
    return np.abs(out.astype(int) - expected)


def padded(fields: ImageFields, extra: int) -> ImageFields:
    """The same image with ``extra`` junk bytes after every buffer row (both planes of nv12)."""
    rows = np.frombuffer(fields.data, np.uint8).reshape(-1, fields.step)
    out = np.full((rows.shape[0], fields.step + extra), 0xEE, np.uint8)
    out[:, : fields.step] = rows
    return dataclasses.replace(fields, step=fields.step + extra, data=out.tobytes())


def raw(**fields) -> SimpleNamespace:
    """A duck-typed Image: a valid 2x3 rgb8 message unless fields override it."""
    defaults = {
        "height": 2,
        "width": 3,
        "encoding": "rgb8",
        "is_bigendian": 0,
        "step": 9,
        "data": bytes(range(18)),
    }
    return SimpleNamespace(**(defaults | fields))


def encode(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


# ---------------------------------------------------------------------------------------------
# Raw images


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_raw_round_trip(encoding: str) -> None:
    rgb = noise()
    fields = rgb_to_image_fields(rgb, encoding)
    assert (fields.height, fields.width, fields.encoding, fields.is_bigendian) == (5, 7, encoding, 0)
    assert fields.step == 7 * BPP[encoding] and len(fields.data) == fields.step * 5
    assert_rgb(image_to_rgb(fields), expected_after(rgb, encoding))
    assert_rgb(message_to_rgb(fields), expected_after(rgb, encoding))


def test_alpha_is_opaque_and_mono16_spans_full_range() -> None:
    rgb = np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8)
    assert rgb_to_image_fields(rgb, "rgba8").data == bytes([255, 255, 255, 255, 0, 0, 0, 255])
    assert np.frombuffer(rgb_to_image_fields(rgb, "mono16").data, "<u2").tolist() == [65535, 0]


def test_input_array_may_be_a_non_contiguous_view() -> None:
    rgb = noise(6, 8)[::2, 1::2]
    assert_rgb(image_to_rgb(rgb_to_image_fields(rgb, "bgr8")), rgb)


def test_padded_rows_are_not_sheared() -> None:
    rgb = noise(4, 5, seed=1)
    step = 5 * 3 + 7
    rows = np.full((4, step), 0xEE, np.uint8)
    rows[:, :15] = rgb[..., ::-1].reshape(4, 15)  # bgr8
    msg = ImageFields(4, 5, "bgr8", 0, step, rows.tobytes())
    assert_rgb(image_to_rgb(msg), rgb)


def test_step_need_not_be_a_multiple_of_the_pixel_size_and_trailing_bytes_are_ignored() -> None:
    rgb = noise(3, 2, seed=2)
    rows = np.zeros((3, 7), np.uint8)  # 6 bytes used per row, one byte of padding
    rows[:, :6] = rgb.reshape(3, 6)
    msg = raw(height=3, width=2, step=7, data=rows.tobytes() + b"trailing junk")
    assert_rgb(image_to_rgb(msg), rgb)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("big_endian", [True, False])
def test_mono16_byte_order(encoding: str, big_endian: bool) -> None:
    values = [[0x1234, 0xABCD, 0x00FF], [0xFF00, 0x8000, 0xFFFF]]
    order = "big" if big_endian else "little"
    padding = b"\x01\x02"  # step 8 for 6 bytes of pixels
    data = b"".join(b"".join(v.to_bytes(2, order) for v in row) + padding for row in values)
    msg = raw(height=2, width=3, encoding=encoding, is_bigendian=int(big_endian), step=8, data=data)
    high = np.array([[0x12, 0xAB, 0x00], [0xFF, 0x80, 0xFF]], np.uint8)
    assert_rgb(image_to_rgb(msg), np.repeat(high[..., None], 3, axis=2))


# ---------------------------------------------------------------------------------------------
# Camera layouts: Bayer, YUV 4:2:2, YUV 4:2:0 (NV12/NV21). Each test builds the message by hand
# with its own numpy code, checks that rgb_to_image_fields writes the same bytes, and compares
# OpenCV's decoding with the original image.


def bayer_by_hand(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample ``rgb`` into a Bayer mosaic: pattern[0] at (0, 0), [1] at (0, 1), [2] at (1, 0), [3] (1, 1)."""
    tile = np.array(["rgb".index(colour) for colour in pattern]).reshape(2, 2)
    rows, cols = np.indices(rgb.shape[:2])
    return np.take_along_axis(rgb, tile[rows % 2, cols % 2][..., None], axis=2)[..., 0]


def bt601(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Y, U and V (float) by the ITU-R BT.601 limited-range formulas whose inverse OpenCV applies."""
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    return {
        "Y": 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255,
        "U": 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255,
        "V": 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255,
    }


def to_u8(values: np.ndarray) -> np.ndarray:
    return np.rint(values).astype(np.uint8)


def pack_422_by_hand(rgb: np.ndarray, order: str) -> np.ndarray:
    """Four bytes per pixel pair in ``order`` (e.g. "U Y0 V Y1"), U and V the mean of the pair's."""
    yuv = bt601(rgb)
    pair = {
        "Y0": to_u8(yuv["Y"][:, 0::2]),
        "Y1": to_u8(yuv["Y"][:, 1::2]),
        "U": to_u8((yuv["U"][:, 0::2] + yuv["U"][:, 1::2]) / 2),
        "V": to_u8((yuv["V"][:, 0::2] + yuv["V"][:, 1::2]) / 2),
    }
    return np.stack([pair[name] for name in order.split()], axis=-1)


def nv_by_hand(rgb: np.ndarray, chroma_order: str) -> np.ndarray:
    """The Y plane, then a half-height plane with each 2x2 block's mean U and V in ``chroma_order``."""
    yuv = bt601(rgb)
    height, width = rgb.shape[:2]

    def block_mean(plane: np.ndarray) -> np.ndarray:
        return (plane[0::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 0::2] + plane[1::2, 1::2]) / 4

    chroma = np.stack([to_u8(block_mean(yuv[name])) for name in chroma_order], axis=-1)
    return np.concatenate([to_u8(yuv["Y"]), chroma.reshape(height // 2, width)])


def assert_same_bytes(fields: ImageFields, expected: np.ndarray, tolerance: int = 0) -> None:
    """The codec's encoder wrote ``expected`` (within ``tolerance`` levels: float rounding of two
    independent computations may differ at a .5 tie)."""
    written = np.frombuffer(fields.data, expected.dtype)
    assert written.size == expected.size
    assert np.abs(written.astype(int) - expected.ravel()).max() <= tolerance


@pytest.mark.parametrize("encoding", ALL)
def test_fields_have_the_ros_layout(encoding: str) -> None:
    bpp, _, rows = LAYOUT[encoding]
    fields = rgb_to_image_fields(scene(6, 8), encoding)
    assert (fields.height, fields.width, fields.encoding, fields.is_bigendian) == (6, 8, encoding, 0)
    assert fields.step == 8 * bpp and len(fields.data) == fields.step * 6 * rows


# Bilinear demosaicing of the smooth scene is off by 0.22 levels on average (rounding inside, some
# levels at the borders, max 10); a wrong pattern swaps or shifts the colours: 25 levels or more.
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_decodes_an_independent_mosaic_only_with_its_own_pattern(pattern: str, bits: int) -> None:
    """16 bit: the high byte is the mosaic, the low byte noise that ``>> 8`` drops."""
    rgb = scene()
    mosaic = bayer_by_hand(rgb, pattern)
    if bits == 8:
        written, data = mosaic, mosaic.tobytes()
    else:
        written = mosaic.astype("<u2") * 257
        noise_byte = np.random.default_rng(4).integers(0, 256, mosaic.shape, np.uint16)
        data = (mosaic.astype("<u2") << 8 | noise_byte).tobytes()
    assert_same_bytes(rgb_to_image_fields(rgb, f"bayer_{pattern}{bits}"), written)

    def decoded_as(other: str) -> np.ndarray:
        return image_to_rgb(ImageFields(48, 64, f"bayer_{other}{bits}", 0, 64 * bits // 8, data))

    error = abs_error(decoded_as(pattern), rgb)
    assert error.mean() < 0.5 and error.max() <= 16
    wrong = {other: abs_error(decoded_as(other), rgb).mean() for other in PATTERNS if other != pattern}
    assert min(wrong.values()) > 20, wrong


# Rounding Y, U and V to integers costs up to 0.5 level each, which the inverse matrix amplifies
# (1.164 for Y, up to 2.018 for U); chroma shared by 2 (4:2:2) or 4 (4:2:0) pixels of the smooth
# scene adds a little. Measured: mean 1.05, max 4 (4:2:2); mean 1.43, max 6 (4:2:0). Read in the
# other byte order (UYVY as YUY2) or with U and V swapped (NV12 as NV21): mean 62 and 31.
UYVY, YUY2 = "U Y0 V Y1", "Y0 U Y1 V"


@pytest.mark.parametrize(
    ("encoding", "order", "other_order"),
    [
        ("yuv422", UYVY, "yuv422_yuy2"),
        ("uyvy", UYVY, "yuyv"),
        ("yuv422_yuy2", YUY2, "yuv422"),
        ("yuyv", YUY2, "uyvy"),
    ],
)
def test_yuv422_decodes_bytes_packed_by_hand(encoding: str, order: str, other_order: str) -> None:
    rgb = scene()
    packed = pack_422_by_hand(rgb, order)
    assert_same_bytes(rgb_to_image_fields(rgb, encoding), packed, tolerance=1)
    msg = ImageFields(48, 64, encoding, 0, 128, packed.tobytes())
    error = abs_error(image_to_rgb(msg), rgb)
    assert error.mean() < 1.5 and error.max() <= 6
    assert abs_error(image_to_rgb(dataclasses.replace(msg, encoding=other_order)), rgb).mean() > 30


@pytest.mark.parametrize(
    ("encoding", "code"), [("yuv422", cv2.COLOR_RGB2YUV_UYVY), ("yuv422_yuy2", cv2.COLOR_RGB2YUV_YUY2)]
)
def test_yuv422_encoder_agrees_with_opencvs(encoding: str, code: int) -> None:
    """Same range, matrix and chroma averaging as OpenCV's own RGB -> 4:2:2 (fixed point: 1 level)."""
    rgb = scene()
    assert_same_bytes(rgb_to_image_fields(rgb, encoding), cv2.cvtColor(rgb, code), tolerance=1)


@pytest.mark.parametrize(
    ("encoding", "chroma_order", "other"), [("nv12", "UV", "nv21"), ("nv21", "VU", "nv12")]
)
def test_nv_decodes_planes_built_by_hand(encoding: str, chroma_order: str, other: str) -> None:
    rgb = scene()
    planes = nv_by_hand(rgb, chroma_order)
    assert_same_bytes(rgb_to_image_fields(rgb, encoding), planes, tolerance=1)
    msg = ImageFields(48, 64, encoding, 0, 64, planes.tobytes())
    error = abs_error(image_to_rgb(msg), rgb)
    assert error.mean() < 2.0 and error.max() <= 8
    assert abs_error(image_to_rgb(dataclasses.replace(msg, encoding=other)), rgb).mean() > 20


@pytest.mark.parametrize("encoding", ALL)
def test_padded_rows_decode_like_unpadded_ones(encoding: str) -> None:
    """Padding after every row (for nv12 and nv21 in both planes, at the Y stride) is skipped."""
    fields = rgb_to_image_fields(noise(6, 8, seed=5), encoding)
    assert_rgb(image_to_rgb(padded(fields, 6)), image_to_rgb(fields))


@pytest.mark.parametrize("encoding", sorted(SIXTEEN_BIT))
@pytest.mark.parametrize("big_endian", [False, True])
def test_16_bit_encodings_keep_the_high_byte_in_either_byte_order(encoding: str, big_endian: bool) -> None:
    """Decodes like the 8-bit encoding holding the high bytes; the low bytes are noise."""
    eight_bit = rgb_to_image_fields(noise(4, 6, seed=6), encoding.replace("16", "8"))
    high = np.frombuffer(eight_bit.data, np.uint8)
    values = high.astype(np.uint16) << 8 | np.random.default_rng(7).integers(0, 256, high.size, np.uint16)
    data = values.astype(">u2" if big_endian else "<u2").tobytes()
    msg = ImageFields(4, 6, encoding, int(big_endian), 2 * eight_bit.step, data)
    assert_rgb(image_to_rgb(msg), image_to_rgb(eight_bit))


# ---------------------------------------------------------------------------------------------
# Compressed images


def test_png_round_trip_is_exact() -> None:
    rgb = noise()
    fields = rgb_to_compressed_fields(rgb, "png")
    assert fields.format == "rgb8; png compressed bgr8"
    assert_rgb(compressed_to_rgb(fields), rgb)
    assert_rgb(message_to_rgb(fields), rgb)


def test_jpeg_round_trip_is_close() -> None:
    rgb = smooth()
    fields = rgb_to_compressed_fields(rgb, "jpeg", quality=95)
    assert fields.format == "rgb8; jpeg compressed bgr8"
    out = compressed_to_rgb(fields)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 2.0


def _variants() -> list[tuple[str, bytes, np.ndarray, bool]]:
    """(format, data, expected RGB, exact?) as real publishers write them."""
    rgb, jpg = noise(), smooth()
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    bgr, jpg_bgr = rgb[..., ::-1], jpg[..., ::-1]
    return [
        ("rgb8; jpeg compressed bgr8", encode(".jpg", jpg_bgr), jpg, False),
        ("bgr8; jpeg compressed bgr8", encode(".jpg", jpg_bgr), jpg, False),
        ("jpeg", encode(".jpg", jpg_bgr), jpg, False),
        ("jpg", encode(".jpg", jpg_bgr), jpg, False),
        (
            "mono8; jpeg compressed mono8",
            encode(".jpg", cv2.cvtColor(jpg, cv2.COLOR_RGB2GRAY)),
            grey3(jpg),
            False,
        ),
        ("png", encode(".png", bgr), rgb, True),
        ("", encode(".png", bgr), rgb, True),  # no format: OpenCV detects the codec
        ("bgr8; png compressed bgr8", encode(".png", bgr), rgb, True),
        ("rgb8; png compressed rgb8", encode(".png", rgb), rgb, True),  # pixels stored in RGB order
        ("bgra8; png compressed bgra8", encode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)), rgb, True),
        ("bgr16; png compressed bgr16", encode(".png", bgr.astype(np.uint16) * 257), rgb, True),
        ("mono8; png compressed mono8", encode(".png", grey), grey3(rgb), True),
        ("mono16; png compressed mono16", encode(".png", grey.astype(np.uint16) * 257), grey3(rgb), True),
        ("rgb8; tiff compressed bgr8", encode(".tiff", bgr), rgb, True),
    ]


VARIANTS = _variants()


@pytest.mark.parametrize(
    ("fmt", "data", "expected", "exact"), VARIANTS, ids=[v[0] or "<empty>" for v in VARIANTS]
)
def test_format_string_variants(fmt: str, data: bytes, expected: np.ndarray, exact: bool) -> None:
    out = compressed_to_rgb(CompressedFields(fmt, data))
    if exact:
        assert_rgb(out, expected)
    else:
        assert out.shape == expected.shape and np.abs(out.astype(int) - expected).mean() < 3.0


# ---------------------------------------------------------------------------------------------
# Channel order: a red image stays red whatever the layout


RED = np.zeros((8, 8, 3), np.uint8)
RED[..., 0] = 255


@pytest.mark.parametrize(
    "msg",
    [
        ImageFields(8, 8, "rgb8", 0, 24, bytes([255, 0, 0]) * 64),
        ImageFields(8, 8, "bgr8", 0, 24, bytes([0, 0, 255]) * 64),
        ImageFields(8, 8, "bgra8", 0, 32, bytes([0, 0, 255, 7]) * 64),
        ImageFields(8, 8, "bgr16", 0, 48, bytes([0, 0, 0, 0, 255, 255]) * 64),
        ImageFields(8, 8, "rgb16", 1, 48, bytes([255, 0, 0, 0, 0, 0]) * 64),  # big-endian 0xFF00
        # Bayer tiles row by row; only the red pixels are lit
        ImageFields(8, 8, "bayer_rggb8", 0, 8, (bytes([255, 0]) * 4 + bytes(8)) * 4),
        ImageFields(8, 8, "bayer_bggr8", 0, 8, (bytes(8) + bytes([0, 255]) * 4) * 4),
        ImageFields(8, 8, "bayer_gbrg8", 0, 8, (bytes(8) + bytes([255, 0]) * 4) * 4),
        ImageFields(8, 8, "bayer_grbg8", 0, 8, (bytes([0, 255]) * 4 + bytes(8)) * 4),
        # red in BT.601 limited range: Y 81, U 90, V 240
        ImageFields(8, 8, "yuv422", 0, 16, bytes([90, 81, 240, 81]) * 32),
        ImageFields(8, 8, "yuv422_yuy2", 0, 16, bytes([81, 90, 81, 240]) * 32),
        ImageFields(8, 8, "nv12", 0, 8, bytes([81]) * 64 + bytes([90, 240]) * 16),
        ImageFields(8, 8, "nv21", 0, 8, bytes([81]) * 64 + bytes([240, 90]) * 16),
        rgb_to_compressed_fields(RED, "jpeg"),
        rgb_to_compressed_fields(RED, "png"),
        CompressedFields("jpeg", encode(".jpg", RED[..., ::-1])),
    ],
    ids=lambda msg: getattr(msg, "encoding", None) or msg.format,
)
def test_red_stays_red(msg: object) -> None:
    out = message_to_rgb(msg)
    assert out.shape == (8, 8, 3)
    assert (out[..., 0] > 240).all() and (out[..., 1:] < 15).all()


# ---------------------------------------------------------------------------------------------
# Message flavours: rosbags (numpy data) and rclpy (array('B') data)


@pytest.mark.parametrize("encoding", ALL)
def test_rosbags_image_through_cdr(encoding: str) -> None:
    fields = rgb_to_image_fields(noise(6, 8), encoding)
    msg = to_image_msg(fields, RB_IMAGE, RB_HEADER)
    cdr = TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/Image")
    back = TYPESTORE.deserialize_cdr(cdr, "sensor_msgs/msg/Image")
    assert isinstance(back.data, np.ndarray) and back.encoding == encoding
    assert_rgb(message_to_rgb(back), image_to_rgb(fields))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_rosbags_compressed_through_cdr(fmt: str) -> None:
    rgb = smooth()
    msg = to_compressed_msg(rgb_to_compressed_fields(rgb, fmt), RB_COMPRESSED, RB_HEADER)
    cdr = TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")
    back = TYPESTORE.deserialize_cdr(cdr, "sensor_msgs/msg/CompressedImage")
    assert isinstance(back.data, np.ndarray) and back.format == f"rgb8; {fmt} compressed bgr8"
    if fmt == "png":
        assert_rgb(message_to_rgb(back), rgb)
    else:
        assert np.abs(message_to_rgb(back).astype(int) - rgb).mean() < 3.0


def test_rosbags_padded_image() -> None:
    rgb = noise(3, 4, seed=3)
    rows = np.full((3, 16), 9, np.uint8)
    rows[:, :12] = rgb.reshape(3, 12)
    msg = RB_IMAGE(
        header=RB_HEADER, height=3, width=4, encoding="rgb8", is_bigendian=0, step=16, data=rows.ravel()
    )
    back = TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, RB_IMAGE.__msgtype__), RB_IMAGE.__msgtype__)
    assert_rgb(image_to_rgb(back), rgb)


@requires_rclpy
@pytest.mark.parametrize("encoding", ALL)
def test_rclpy_image_through_serialization(encoding: str) -> None:
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    fields = rgb_to_image_fields(noise(6, 8), encoding)
    msg = to_image_msg(fields, Image, Header(frame_id="camera"))
    assert isinstance(msg.data, array.array) and msg.header.frame_id == "camera"
    assert_rgb(message_to_rgb(msg), image_to_rgb(fields))
    back = deserialize_message(serialize_message(msg), Image)
    assert_rgb(message_to_rgb(back), image_to_rgb(fields))


@requires_rclpy
def test_rclpy_compressed_and_bytes_data() -> None:
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

    rgb = noise()
    msg = to_compressed_msg(rgb_to_compressed_fields(rgb, "png"), CompressedImage, Header())
    assert msg.format == "rgb8; png compressed bgr8"
    assert_rgb(message_to_rgb(deserialize_message(serialize_message(msg), CompressedImage)), rgb)
    fields = rgb_to_image_fields(rgb, "rgb8")  # rclpy also accepts bytes for data
    msg = Image(height=5, width=7, encoding="rgb8", step=fields.step, data=fields.data)
    assert_rgb(message_to_rgb(msg), rgb)


# ---------------------------------------------------------------------------------------------
# Errors: always ImageConversionError with a one-line reason


PNG = encode(".png", smooth(8, 8))


def _jpeg_declaring(height: int, width: int) -> bytes:
    data = bytearray(encode(".jpg", smooth(8, 8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _png_with_idat_length(length: int) -> bytes:
    data = bytearray(PNG)
    idat = data.index(b"IDAT") - 4
    data[idat : idat + 4] = length.to_bytes(4, "big")
    return bytes(data)


def _png_declaring(height: int, width: int) -> bytes:
    data = bytearray(encode(".png", smooth(8, 8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(data)


ERROR_CASES = [
    (raw(encoding="nv24"), r"sensor_msgs/Image: unknown encoding 'nv24' \(supported: rgb8, "),
    (raw(encoding=None), "unknown encoding None"),
    (raw(height=0), "height and width must be positive, got 0x3"),
    (raw(width=-1), "height and width must be positive"),
    (raw(step=8), r"step 8 < width\*bpp 9"),
    (raw(step=-5), r"step -5 < width\*bpp 9"),
    (raw(data=bytes(17)), r"data has 17 bytes, expected at least step\*height = 18"),
    (raw(data=b""), r"data has 0 bytes"),
    (raw(height=2**31, width=2**31, step=3 * 2**31), r"data has 18 bytes, expected at least step\*height"),
    (raw(encoding="mono16", width=3, step=7), "step 7 is not a multiple of 2 for 16-bit pixels"),
    (raw(encoding="rgba8", step=11), r"step 11 < width\*bpp 12"),
    (raw(encoding="rgb16", data=bytes(36)), r"step 9 < width\*bpp 18"),
    (
        raw(encoding="rgb16", step=18, data=bytes(35)),
        r"data has 35 bytes, expected at least step\*height = 36",
    ),
    (raw(encoding="bayer_gbrg16", step=7), "step 7 is not a multiple of 2 for 16-bit pixels"),
    (raw(encoding="bayer_rggb8", step=2), r"step 2 < width\*bpp 3"),
    (
        raw(encoding="yuv422", step=6),
        r"sensor_msgs/Image: yuv422 needs an even width \(chroma is shared by 1x2 pixels\), got 2x3",
    ),
    (raw(encoding="yuyv", width=5, step=10), "yuyv needs an even width"),
    (raw(encoding="yuv422_yuy2", width=4, step=7), r"step 7 < width\*bpp 8"),
    (
        raw(encoding="nv12", height=3, width=4, step=4),
        r"nv12 needs an even height and width \(chroma is shared by 2x2 pixels\), got 3x4",
    ),
    (raw(encoding="nv21", width=3), "nv21 needs an even height and width"),
    (
        raw(encoding="nv12", width=4, step=4, data=bytes(8)),
        r"data has 8 bytes, expected at least step\*height\*3/2 = 12",
    ),
    (raw(data=list(range(18))), "data of type list is not bytes-like"),
    (raw(data=None), "data of type NoneType is not bytes-like"),
    (raw(data=np.zeros(18, np.int32)), "data must be a contiguous buffer of bytes"),
    (raw(data=np.zeros(36, np.uint8)[::2]), "data must be a contiguous buffer of bytes"),
    (raw(height="two"), "field height missing or not an integer"),
    (SimpleNamespace(height=2, width=3, encoding="rgb8", is_bigendian=0, data=b""), "field step missing"),
    (object(), "object is neither a sensor_msgs/Image nor a CompressedImage"),
    (CompressedFields("rgb8; jpeg compressed bgr8", b"not an image"), "could not decode 12 bytes as jpeg"),
    (CompressedFields("png", PNG[:40]), "could not decode 40 bytes as png"),
    (CompressedFields("jpeg", b""), "could not decode 0 bytes as jpeg: no data"),
    (CompressedFields("16UC1; compressedDepth png", PNG), "is a depth image, not a camera image"),
    (CompressedFields("32FC1; compressedDepth", PNG), "is a depth image"),
    (CompressedFields("h264", PNG), r"unsupported format 'h264' \(expected"),
    (CompressedFields("rgb8; jpeg compressed", PNG), "unsupported format"),
    (CompressedFields("rgb8; webp compressed bgr8", PNG), "unsupported format"),
    (SimpleNamespace(format=5, data=PNG), "format must be a string, got int"),
    (SimpleNamespace(format="png", data="text"), "data of type str is not bytes-like"),
    (CompressedFields("jpeg", _jpeg_declaring(65535, 65535)), "header declares 4294836225 pixels"),
    (CompressedFields("png", _png_declaring(100_000, 100_000)), "header declares 10000000000 pixels"),
    # OpenCV would zero-fill a 2.9 GB buffer for this 1-byte change before failing
    (
        CompressedFields("png", _png_with_idat_length(0xAC0000CB)),
        r"PNG chunk at byte \d+ declares 2885681355 bytes",
    ),
]


@pytest.mark.parametrize(("msg", "match"), ERROR_CASES, ids=[match[:48] for _, match in ERROR_CASES])
def test_bad_messages_raise_one_line_errors(msg: object, match: str) -> None:
    with pytest.raises(ImageConversionError, match=match) as info:
        message_to_rgb(msg)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rgb_to_image_fields(noise().astype(np.float32)), r"expected an RGB uint8 array \[H, W, 3\]"),
        (lambda: rgb_to_image_fields(noise()[..., :2]), r"got uint8 \(5, 7, 2\)"),
        (lambda: rgb_to_image_fields([[1, 2, 3]]), "got list"),
        (lambda: rgb_to_image_fields(np.zeros((0, 4, 3), np.uint8)), "height and width must be positive"),
        (lambda: rgb_to_image_fields(noise(), "nv24"), "unknown encoding 'nv24'"),
        (lambda: rgb_to_image_fields(noise(4, 5), "yuv422"), r"^yuv422 needs an even width .* got 4x5$"),
        (
            lambda: rgb_to_image_fields(noise(5, 6), "nv12"),
            r"^nv12 needs an even height and width .* got 5x6$",
        ),
        (lambda: rgb_to_compressed_fields(noise(), "bmp"), r"unsupported compression 'bmp'"),
        (lambda: rgb_to_compressed_fields(noise(), "jpeg", quality=101), "JPEG quality 101 outside 0..100"),
    ],
)
def test_bad_encoder_input(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ImageConversionError, match=match):
        call()


def test_the_error_is_a_value_error() -> None:
    assert issubclass(ImageConversionError, ValueError)


def test_module_imports_without_ros() -> None:
    """Bag tools use the codec on machines without ROS: it must not import rclpy or message packages."""
    code = "import sys; sys.modules.update(rclpy=None, sensor_msgs=None); import vpr_ros.io.image_codec"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------------------------------------
# Property tests: any message gives an RGB image of the declared size or ImageConversionError

FUZZ = settings(
    max_examples=1500,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CONTAINERS = {
    "bytes": bytes,
    "array": lambda b: array.array("B", b),
    "numpy": lambda b: np.frombuffer(b, np.uint8),
    "bytearray": bytearray,
}
WEIRD_DIMS = st.sampled_from([2**31 - 1, 2**32, 10**12, -(2**31)])


@st.composite
def raw_messages(draw) -> tuple[SimpleNamespace, bool]:
    """(message, valid by construction): half consistent layouts, half anything at all."""
    if draw(st.booleans()):
        encoding = draw(st.sampled_from(ALL))
        bpp, (block_height, block_width), rows = LAYOUT[encoding]
        height = draw(st.integers(1, 6 // block_height)) * block_height
        width = draw(st.integers(1, 6 // block_width)) * block_width
        itemsize = 2 if encoding in SIXTEEN_BIT else 1
        step = width * bpp + draw(st.integers(0, 3)) * itemsize
        size = int(step * height * rows) + draw(st.integers(0, 4))
        valid = True
    else:
        encoding = draw(st.one_of(st.sampled_from([*ALL, "nv24", "32FC1", "RGB8", ""]), st.text()))
        height, width = (draw(st.one_of(st.integers(-2, 6), WEIRD_DIMS)) for _ in range(2))
        step = draw(st.one_of(st.integers(-2, 30), WEIRD_DIMS))
        size = draw(st.integers(0, 200))
        valid = False
    container = draw(st.sampled_from(sorted(CONTAINERS)))
    data = CONTAINERS[container](draw(st.binary(min_size=size, max_size=size)))
    is_bigendian = draw(st.integers(0, 2))
    msg = SimpleNamespace(
        height=height, width=width, encoding=encoding, is_bigendian=is_bigendian, step=step, data=data
    )
    return msg, valid


@FUZZ
@given(raw_messages())
def test_any_raw_message_converts_or_raises(case: tuple[SimpleNamespace, bool]) -> None:
    msg, valid = case
    note(repr(msg))
    try:
        out = message_to_rgb(msg)
    except ImageConversionError as exc:
        assert not valid, f"valid message refused: {exc}"
        assert "\n" not in str(exc)
        return
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.shape == (msg.height, msg.width, 3)


def _samples() -> list[bytes]:
    rgb = smooth(12, 16)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return [
        encode(".jpg", rgb),
        encode(".jpg", grey),
        encode(".png", rgb),
        encode(".png", grey.astype(np.uint16) * 257),
        encode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)),
    ]


SAMPLES = _samples()
FORMATS = [
    "rgb8; jpeg compressed bgr8",
    "bgr8; png compressed bgr8",
    "rgb8; png compressed rgb8",
    "mono16; png compressed mono16",
    "jpeg",
    "png",
    "jpg",
    "",
    "16UC1; compressedDepth png",
    "h264",
]


@st.composite
def compressed_messages(draw) -> SimpleNamespace:
    """Random format strings with random bytes, valid files, or valid files with bytes flipped/cut."""
    fmt = draw(st.sampled_from([*FORMATS, "<any text>"]))
    if fmt == "<any text>":
        fmt = draw(st.text(max_size=40))
    kind = draw(st.sampled_from(["random", "valid", "corrupted"]))
    if kind == "random":
        data = draw(st.binary(max_size=300))
    else:
        data = bytearray(draw(st.sampled_from(SAMPLES)))
        if kind == "corrupted":
            for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
                data[pos] = draw(st.integers(0, 255))
            if draw(st.booleans()):
                data = data[: draw(st.integers(0, len(data)))]
        data = bytes(data)
    container = draw(st.sampled_from(sorted(CONTAINERS)))
    return SimpleNamespace(format=fmt, data=CONTAINERS[container](data))


@FUZZ
@given(compressed_messages())
def test_any_compressed_message_converts_or_raises(msg: SimpleNamespace) -> None:
    note(repr(msg))
    try:
        out = message_to_rgb(msg)
    except ImageConversionError as exc:
        assert "\n" not in str(exc)
        return
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.ndim == 3 and out.shape[2] == 3 and 0 < out.shape[0] * out.shape[1] <= MAX_DECODED_PIXELS
