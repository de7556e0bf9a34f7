"""Conversion between ROS 2 image messages and RGB uint8 arrays, without cv_bridge or rclpy.

The models in vpr_ros take RGB uint8 images ``[H, W, 3]``. Cameras publish many layouts, so this
module is the single place that turns a ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``
into that array, and back (for tests, replay and mapping tools).

Messages are read by duck typing (``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``,
``data``; ``format``, ``data`` for compressed), so the same code handles rclpy messages (``data`` is
an ``array.array('B')``), messages deserialized by ``rosbags`` (``data`` is a numpy uint8 array),
and plain bytes. rclpy is never imported here: bag tools must work without a ROS install.

Unlike ``rosbags-image``, rows are read with the message's ``step`` (padded rows are not sheared)
and a failed decode raises instead of asserting. Every malformed message raises
:class:`ImageConversionError` with a one-line reason, so a node can log it and drop the frame.
"""

from __future__ import annotations

import array
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import cv2
import numpy as np

__all__ = [
    "MAX_DECODED_PIXELS",
    "CompressedFields",
    "ImageConversionError",
    "ImageFields",
    "compressed_to_rgb",
    "image_to_rgb",
    "message_to_rgb",
    "rgb_to_compressed_fields",
    "rgb_to_image_fields",
    "to_compressed_msg",
    "to_image_msg",
]

M = TypeVar("M")

# A corrupted JPEG/PNG header can declare a huge image in a few bytes; refuse before OpenCV
# allocates it. 2**26 pixels (8192 x 8192) is far above any camera a VPR model is fed with. Other
# codecs (TIFF) rely on OpenCV's own limit (CV_IO_MAX_IMAGE_PIXELS, 2**30 by default).
MAX_DECODED_PIXELS = 1 << 26


class ImageConversionError(ValueError):
    """A message cannot be converted; the text names the problem on one line."""


# RGB uint8 [H, W, 3] -> the rows of a message's buffer ([rows, W] or [rows, W, channels]).
_Encoder = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Encoding:
    """Layout of one raw encoding and its conversions to and from RGB.

    A pixel is ``channels`` samples of ``dtype`` (packed 4:2:2 has two: its Y and, alternately, U or
    V). ``to_rgb`` is the OpenCV conversion and ``from_rgb`` the encoder (None = identity for both).
    Subsampled chroma is shared by ``block`` (rows, columns) pixels, so the image must be made of
    whole blocks; a ``semiplanar`` buffer is the Y plane followed by a half-height plane of
    interleaved chroma, both ``step`` bytes per row.
    """

    channels: int
    dtype: type[np.unsignedinteger]
    to_rgb: int | None
    from_rgb: _Encoder | None
    block: tuple[int, int] = (1, 1)
    semiplanar: bool = False


def _cvt(code: int) -> _Encoder:
    """An encoder that is one OpenCV conversion: channel order, alpha or BT.601 grey."""
    return partial(cv2.cvtColor, code=code)


# The Bayer, 4:2:2 and 4:2:0 encoders below are numpy, not OpenCV, so that the tests compare
# OpenCV's decoding with an independent reference of each layout.


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Bayer mosaic [H, W]: every pixel keeps one colour, ``pattern`` naming the 2x2 tile row by row."""
    out = np.empty(rgb.shape[:2], np.uint8)
    for (row, col), colour in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
        out[row::2, col::2] = rgb[row::2, col::2, "rgb".index(colour)]
    return out


# ITU-R BT.601 RGB -> YUV in limited range (Y 16..235, U and V 16..240): the matrix whose inverse
# OpenCV's YUV2RGB_UYVY, _YUY2, _NV12 and _NV21 apply (R = 1.164 (Y - 16) + 1.596 (V - 128), ...).
_RGB_TO_YUV = (
    np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255
)
_YUV_OFFSET = np.array([16.0, 128.0, 128.0])


def _yuv(rgb: np.ndarray) -> np.ndarray:
    """Y, U, V of every pixel [H, W, 3], unrounded: chroma is averaged over its block before rounding."""
    return rgb @ _RGB_TO_YUV.T + _YUV_OFFSET


def _round_u8(values: np.ndarray) -> np.ndarray:
    """Nearest 8-bit level (limited-range Y, U and V lie in 16..240: nothing to saturate)."""
    return np.rint(values).astype(np.uint8)


def _yuv422(rgb: np.ndarray, luma_first: bool) -> np.ndarray:
    """Packed 4:2:2 [H, W, 2]: a pixel pair shares its mean U and V, in bytes U Y0 V Y1 or Y0 U Y1 V."""
    yuv = _yuv(rgb)
    chroma = (yuv[:, 0::2, 1:] + yuv[:, 1::2, 1:]) / 2  # [H, W/2, (U, V)]: flattened, U and V alternate
    luma, other = (0, 1) if luma_first else (1, 0)
    out = np.empty((*rgb.shape[:2], 2), np.uint8)
    out[..., luma] = _round_u8(yuv[..., 0])
    out[..., other] = _round_u8(chroma).reshape(rgb.shape[:2])
    return out


def _yuv420sp(rgb: np.ndarray, v_first: bool) -> np.ndarray:
    """NV12 [H*3/2, W]: the Y plane, then the mean U and V of each 2x2 block, interleaved (V first: NV21)."""
    height, width = rgb.shape[:2]
    yuv = _yuv(rgb)
    chroma = yuv[..., 1:].reshape(height // 2, 2, width // 2, 2, 2).mean(axis=(1, 3))
    if v_first:
        chroma = chroma[..., ::-1]
    return np.concatenate([_round_u8(yuv[..., 0]), _round_u8(chroma).reshape(height // 2, width)])


# OpenCV names a Bayer pattern by the 2nd and 3rd pixels of its second row, ROS by the top-left 2x2
# tile: rggb is OpenCV's BayerBG (cv_bridge's getConversionCodes has the same mapping).
_BAYER_TO_RGB = {
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}

# 16-bit data is reduced to 8 bit by ``value >> 8`` (keep the high byte, i.e. assume the full
# 0..65535 range is used) before any conversion, and written back as ``value * 257`` so that
# 0 -> 0 and 255 -> 65535.
_ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, np.uint8, None, None),
    "bgr8": _Encoding(3, np.uint8, cv2.COLOR_BGR2RGB, _cvt(cv2.COLOR_RGB2BGR)),
    "rgba8": _Encoding(4, np.uint8, cv2.COLOR_RGBA2RGB, _cvt(cv2.COLOR_RGB2RGBA)),
    "bgra8": _Encoding(4, np.uint8, cv2.COLOR_BGRA2RGB, _cvt(cv2.COLOR_RGB2BGRA)),
    "mono8": _Encoding(1, np.uint8, cv2.COLOR_GRAY2RGB, _cvt(cv2.COLOR_RGB2GRAY)),
    "mono16": _Encoding(1, np.uint16, cv2.COLOR_GRAY2RGB, _cvt(cv2.COLOR_RGB2GRAY)),
    "rgb16": _Encoding(3, np.uint16, None, None),
    "bgr16": _Encoding(3, np.uint16, cv2.COLOR_BGR2RGB, _cvt(cv2.COLOR_RGB2BGR)),
    "rgba16": _Encoding(4, np.uint16, cv2.COLOR_RGBA2RGB, _cvt(cv2.COLOR_RGB2RGBA)),
    "bgra16": _Encoding(4, np.uint16, cv2.COLOR_BGRA2RGB, _cvt(cv2.COLOR_RGB2BGRA)),
    **{
        f"bayer_{pattern}{bits}": _Encoding(1, dtype, code, partial(_mosaic, pattern=pattern))
        for bits, dtype in ((8, np.uint8), (16, np.uint16))
        for pattern, code in _BAYER_TO_RGB.items()
    },
    "yuv422": _Encoding(2, np.uint8, cv2.COLOR_YUV2RGB_UYVY, partial(_yuv422, luma_first=False), (1, 2)),
    "yuv422_yuy2": _Encoding(2, np.uint8, cv2.COLOR_YUV2RGB_YUY2, partial(_yuv422, luma_first=True), (1, 2)),
    "nv12": _Encoding(1, np.uint8, cv2.COLOR_YUV2RGB_NV12, partial(_yuv420sp, v_first=False), (2, 2), True),
    "nv21": _Encoding(1, np.uint8, cv2.COLOR_YUV2RGB_NV21, partial(_yuv420sp, v_first=True), (2, 2), True),
}
# OpenCV type names, read the way cv_bridge reads them (3 channels are BGR, 4 are BGRA), and the
# FourCC names sensor_msgs gives the two 4:2:2 byte orders since Iron.
_ALIASES = {
    "8UC1": "mono8",
    "8UC3": "bgr8",
    "8UC4": "bgra8",
    "16UC1": "mono16",
    "uyvy": "yuv422",
    "yuyv": "yuv422_yuy2",
}
_SUPPORTED = ", ".join([*_ENCODINGS, *_ALIASES])

# image_transport "compressed" plugin codecs (tiff since Iron) and the old bare spelling "jpg".
_CODECS = ("jpeg", "jpg", "png", "tiff")
# JPEG start-of-frame markers (all SOFn except DHT C4, JPG C8 and DAC CC), which carry the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_IMAGE = "sensor_msgs/Image"
_COMPRESSED = "sensor_msgs/CompressedImage"


@dataclass(frozen=True)
class ImageFields:
    """The content fields of a ``sensor_msgs/Image``; also accepted by :func:`image_to_rgb`."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


@dataclass(frozen=True)
class CompressedFields:
    """The content fields of a ``sensor_msgs/CompressedImage``; also accepted by :func:`compressed_to_rgb`."""

    format: str
    data: bytes


def _lookup(encoding: object) -> _Encoding:
    """Table entry for an encoding name or its OpenCV alias."""
    enc = _ENCODINGS.get(_ALIASES.get(encoding, encoding)) if isinstance(encoding, str) else None
    if enc is None:
        raise ImageConversionError(f"{_IMAGE}: unknown encoding {encoding!r:.40} (supported: {_SUPPORTED})")
    return enc


def _buffer(data: object, kind: str) -> np.ndarray:
    """Zero-copy uint8 view of any contiguous bytes-like ``data`` (bytes, array('B'), numpy uint8)."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise ImageConversionError(f"{kind}: data of type {type(data).__name__} is not bytes-like") from None
    if view.itemsize != 1 or not view.c_contiguous:
        raise ImageConversionError(
            f"{kind}: data must be a contiguous buffer of bytes (format {view.format!r})"
        )
    return np.frombuffer(view.cast("B"), np.uint8)


def _int_field(msg: object, name: str) -> int:
    """An integer field of a duck-typed message; unconvertible values are a conversion error."""
    try:
        return int(getattr(msg, name))
    except (AttributeError, TypeError, ValueError, OverflowError):
        raise ImageConversionError(f"{_IMAGE}: field {name} missing or not an integer") from None


def _to_rgb8(img: np.ndarray, code: int | None) -> np.ndarray:
    """Reduce 16-bit to 8-bit (high byte) and apply ``code``; always returns a new C-contiguous array."""
    if img.dtype != np.uint8:
        img = (img >> 8).astype(np.uint8)
    return np.array(img, order="C") if code is None else cv2.cvtColor(img, code)


def _check_blocks(what: str, enc: _Encoding, height: int, width: int) -> None:
    """Refuse a size that splits a block of pixels sharing chroma (OpenCV would assert or crop)."""
    if height % enc.block[0] or width % enc.block[1]:
        even = " and ".join(side for side, size in zip(("height", "width"), enc.block) if size == 2)
        raise ImageConversionError(
            f"{what} needs an even {even} (chroma is shared by {enc.block[0]}x{enc.block[1]} pixels), "
            f"got {height}x{width}"
        )


def image_to_rgb(msg: Any) -> np.ndarray:
    """Convert a raw ``sensor_msgs/Image`` (rclpy, rosbags or :class:`ImageFields`) to RGB uint8.

    Rows are ``step`` bytes long, of which the first ``width * bytes_per_pixel`` are used; bytes
    after the last row are ignored. nv12 and nv21 have ``height * 3/2`` rows: the Y plane, then the
    interleaved chroma plane (``step`` is the Y row stride, as sensor_msgs defines it).
    ``is_bigendian`` is honoured for 16-bit encodings, which are reduced to 8 bit by ``value >> 8``
    before demosaicing or colour conversion. Alpha is dropped and grey is replicated to 3 channels.
    """
    encoding = getattr(msg, "encoding", None)
    enc = _lookup(encoding)
    height, width, step = (_int_field(msg, name) for name in ("height", "width", "step"))
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"{_IMAGE}: height and width must be positive, got {height}x{width}")
    _check_blocks(f"{_IMAGE}: {encoding}", enc, height, width)
    itemsize = np.dtype(enc.dtype).itemsize
    row_bytes = width * enc.channels * itemsize
    if step < row_bytes:
        raise ImageConversionError(f"{_IMAGE}: step {step} < width*bpp {row_bytes}")
    if step % itemsize:
        raise ImageConversionError(f"{_IMAGE}: step {step} is not a multiple of {itemsize} for 16-bit pixels")
    rows, rows_text = (height * 3 // 2, "height*3/2") if enc.semiplanar else (height, "height")
    buf = _buffer(getattr(msg, "data", None), _IMAGE)
    if buf.size < step * rows:  # checked before any allocation: declared sizes may be absurd
        raise ImageConversionError(
            f"{_IMAGE}: data has {buf.size} bytes, expected at least step*{rows_text} = {step * rows}"
        )
    dtype = np.dtype(enc.dtype).newbyteorder(">" if _int_field(msg, "is_bigendian") else "<")
    pixels = np.ndarray(
        (rows, width, enc.channels),
        dtype=dtype,
        buffer=buf,
        strides=(step, enc.channels * itemsize, itemsize),
    )
    return _to_rgb8(pixels, enc.to_rgb)


def _parse_format(fmt: object) -> tuple[str, bool]:
    """Return (codec, pixels_are_rgb) from an image_transport ``format`` string.

    ``"<original encoding>; <codec> compressed <compressed encoding>"``: OpenCV decodes to BGR
    unless the compressed encoding says rgb (image_transport's subscriber makes the same choice).
    A bare codec (``"jpeg"``, old publishers) means BGR; an empty format lets OpenCV detect it.
    """
    if not isinstance(fmt, str):
        raise ImageConversionError(f"{_COMPRESSED}: format must be a string, got {type(fmt).__name__}")
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(f"{_COMPRESSED}: format {fmt!r:.60} is a depth image, not a camera image")
    original, sep, rest = fmt.partition(";")
    words = (rest if sep else original).lower().split()
    if not words:
        return "", False
    is_transport = len(words) == 3 and words[1] == "compressed"
    if words[0] not in _CODECS or not (len(words) == 1 or is_transport):
        raise ImageConversionError(
            f"{_COMPRESSED}: unsupported format {fmt!r:.60} (expected 'jpeg', 'png' or "
            "'<encoding>; <jpeg|png|tiff> compressed <encoding>')"
        )
    return words[0], is_transport and words[2].startswith("rgb")


def _png_pixels(data: memoryview, what: str) -> int | None:
    """Pixel count from the IHDR chunk; refuses chunks that run past the end of the data.

    OpenCV (4.10+) allocates each PNG chunk at its declared length before reading it, so one
    flipped byte in a length field makes it zero-fill gigabytes; a chunk that does not fit in the
    data is truncated or corrupt anyway.
    """
    pixels, pos = None, 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        if pos + 12 + length > len(data):
            raise ImageConversionError(
                f"{what}: PNG chunk at byte {pos} declares {length} bytes past the end"
            )
        if pos == 8 and data[12:16] == b"IHDR" and length >= 8:
            pixels = int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
        pos += 12 + length
    return pixels


def _jpeg_pixels(data: memoryview) -> int | None:
    """Pixel count from the first JPEG start-of-frame segment, or None when none is found."""
    pos = 2
    while pos + 9 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in _JPEG_SOF:  # payload: precision (1 byte), height, width (2 bytes each)
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            return height * int.from_bytes(data[pos + 7 : pos + 9], "big")
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG, TIFF; 8 or 16 bit) to RGB uint8.

    Decoding uses ``IMREAD_UNCHANGED``: no EXIF rotation (camera frames are already in sensor
    orientation) and 16-bit PNGs keep their depth before the ``>> 8`` reduction. Depth images
    (``compressedDepth``) are rejected.
    """
    codec, pixels_are_rgb = _parse_format(getattr(msg, "format", None))
    buf = _buffer(getattr(msg, "data", None), _COMPRESSED)
    what = f"{_COMPRESSED}: could not decode {buf.size} bytes as {codec or 'an image'}"
    if buf.size == 0:
        raise ImageConversionError(f"{what}: no data")
    data = memoryview(buf)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        pixels = _png_pixels(data, what)
    else:
        pixels = _jpeg_pixels(data) if data[:2] == b"\xff\xd8" else None
    if pixels is not None and pixels > MAX_DECODED_PIXELS:
        raise ImageConversionError(f"{what}: header declares {pixels} pixels (limit {MAX_DECODED_PIXELS})")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageConversionError(f"{what}: {' '.join(str(exc).split())}") from None
    if img is None or img.size == 0:
        raise ImageConversionError(what)
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageConversionError(f"{what}: unsupported pixel type {img.dtype}")
    channels = 1 if img.ndim == 2 else img.shape[2]
    codes = {
        1: cv2.COLOR_GRAY2RGB,
        3: None if pixels_are_rgb else cv2.COLOR_BGR2RGB,
        4: cv2.COLOR_RGBA2RGB if pixels_are_rgb else cv2.COLOR_BGRA2RGB,
    }
    if channels not in codes:
        raise ImageConversionError(f"{what}: unsupported channel count {channels}")
    return _to_rgb8(img, codes[channels])


def message_to_rgb(msg: Any) -> np.ndarray:
    """Convert either image message type; a ``format`` attribute marks a CompressedImage."""
    if hasattr(msg, "format"):
        return compressed_to_rgb(msg)
    if hasattr(msg, "encoding"):
        return image_to_rgb(msg)
    raise ImageConversionError(f"{type(msg).__name__} is neither a sensor_msgs/Image nor a CompressedImage")


def _check_rgb(rgb: object) -> np.ndarray:
    """Validate encoder input (the same error type as decoding, so callers catch one class)."""
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ImageConversionError(f"expected an RGB uint8 array [H, W, 3], got {desc}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageConversionError(f"height and width must be positive, got {rgb.shape[0]}x{rgb.shape[1]}")
    return np.ascontiguousarray(rgb)


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = "rgb8") -> ImageFields:
    """Encode RGB uint8 as a raw image in ``encoding`` (any name :func:`image_to_rgb` accepts).

    Grey is ITU-R BT.601 luma (``cv2.COLOR_RGB2GRAY``); 16 bit is ``value * 257``, little-endian;
    alpha is opaque (255). Bayer keeps each pixel's colour of the pattern; YUV is BT.601 limited
    range with the chroma of a block the mean of its pixels (what OpenCV's RGB2YUV_UYVY writes).
    Rows are unpadded (``step = width * bytes_per_pixel``).
    """
    rgb = _check_rgb(rgb)
    enc = _lookup(encoding)
    height, width = rgb.shape[:2]
    _check_blocks(encoding, enc, height, width)
    out = rgb if enc.from_rgb is None else enc.from_rgb(rgb)
    if enc.dtype == np.uint16:
        out = (out.astype(np.uint16) * 257).astype("<u2")
    step = width * enc.channels * np.dtype(enc.dtype).itemsize
    return ImageFields(height, width, encoding, 0, step, out.tobytes())


def rgb_to_compressed_fields(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> CompressedFields:
    """Compress RGB uint8 the way image_transport does (BGR inside the file); ``quality`` is JPEG only."""
    rgb = _check_rgb(rgb)
    if fmt not in ("jpeg", "png"):
        raise ImageConversionError(f"unsupported compression {fmt!r} (supported: jpeg, png)")
    if not 0 <= quality <= 100:
        raise ImageConversionError(f"JPEG quality {quality} outside 0..100")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(
        ".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params
    )
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return CompressedFields(f"rgb8; {fmt} compressed bgr8", encoded.tobytes())


def _data_for(msg_cls: type, data: bytes) -> Any:
    """rosbags messages (dataclasses) hold numpy arrays; rclpy messages hold ``array('B')``.

    rclpy accepts bytes too, but then validates every byte in Python (slow for images); an
    ``array('B')`` is stored as is.
    """
    return np.frombuffer(data, np.uint8) if dataclasses.is_dataclass(msg_cls) else array.array("B", data)


def to_image_msg(fields: ImageFields, msg_cls: type[M], header: Any) -> M:
    """Build a ``sensor_msgs/Image`` of class ``msg_cls`` (rclpy or rosbags) from ``fields``."""
    return msg_cls(  # type: ignore[call-arg]
        header=header,
        height=fields.height,
        width=fields.width,
        encoding=fields.encoding,
        is_bigendian=fields.is_bigendian,
        step=fields.step,
        data=_data_for(msg_cls, fields.data),
    )


def to_compressed_msg(fields: CompressedFields, msg_cls: type[M], header: Any) -> M:
    """Build a ``sensor_msgs/CompressedImage`` of class ``msg_cls`` (rclpy or rosbags) from ``fields``."""
    return msg_cls(header=header, format=fields.format, data=_data_for(msg_cls, fields.data))  # type: ignore[call-arg]
