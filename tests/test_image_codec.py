"""Tests for vpr_ros.io.image_codec: exact round trips, layouts, message flavours, errors, fuzzing."""

from __future__ import annotations

import array
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

# encoding -> bytes per pixel; the aliases are read the way cv_bridge reads them.
BPP = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2}
BPP |= {"8UC1": 1, "8UC3": 3, "8UC4": 4, "16UC1": 2}
ENCODINGS = list(BPP)
MONO = {"mono8", "mono16", "8UC1", "16UC1"}
SIXTEEN_BIT = {"mono16", "16UC1"}

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


def grey3(rgb: np.ndarray) -> np.ndarray:
    """What a mono encoding gives back: BT.601 luma replicated to three channels."""
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def expected_after(rgb: np.ndarray, encoding: str) -> np.ndarray:
    return grey3(rgb) if encoding in MONO else rgb


def assert_rgb(out: np.ndarray, expected: np.ndarray) -> None:
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


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
        rgb_to_compressed_fields(RED, "jpeg"),
        rgb_to_compressed_fields(RED, "png"),
        CompressedFields("jpeg", encode(".jpg", RED[..., ::-1])),
    ],
    ids=["rgb8", "bgr8", "bgra8", "jpeg", "png", "bare-jpeg"],
)
def test_red_stays_red(msg: object) -> None:
    out = message_to_rgb(msg)
    assert out.shape == (8, 8, 3)
    assert (out[..., 0] > 240).all() and (out[..., 1:] < 15).all()


# ---------------------------------------------------------------------------------------------
# Message flavours: rosbags (numpy data) and rclpy (array('B') data)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_rosbags_image_through_cdr(encoding: str) -> None:
    rgb = noise()
    msg = to_image_msg(rgb_to_image_fields(rgb, encoding), RB_IMAGE, RB_HEADER)
    cdr = TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/Image")
    back = TYPESTORE.deserialize_cdr(cdr, "sensor_msgs/msg/Image")
    assert isinstance(back.data, np.ndarray) and back.encoding == encoding
    assert_rgb(message_to_rgb(back), expected_after(rgb, encoding))


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
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_rclpy_image_through_serialization(encoding: str) -> None:
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    rgb = noise()
    msg = to_image_msg(rgb_to_image_fields(rgb, encoding), Image, Header(frame_id="camera"))
    assert isinstance(msg.data, array.array) and msg.header.frame_id == "camera"
    assert_rgb(message_to_rgb(msg), expected_after(rgb, encoding))
    back = deserialize_message(serialize_message(msg), Image)
    assert_rgb(message_to_rgb(back), expected_after(rgb, encoding))


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
    (raw(encoding="yuv422_yuy2"), r"sensor_msgs/Image: unknown encoding 'yuv422_yuy2' \(supported: rgb8, "),
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
        (lambda: rgb_to_image_fields(noise(), "yuv422"), "unknown encoding 'yuv422'"),
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
        encoding = draw(st.sampled_from(ENCODINGS))
        height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        itemsize = 2 if encoding in SIXTEEN_BIT else 1
        step = width * BPP[encoding] + draw(st.integers(0, 3)) * itemsize
        size = step * height + draw(st.integers(0, 4))
        valid = True
    else:
        encoding = draw(
            st.one_of(st.sampled_from([*ENCODINGS, "yuv422_yuy2", "32FC1", "RGB8", ""]), st.text())
        )
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
