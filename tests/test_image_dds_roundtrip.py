"""A real ROS 2 round trip: images built by image_codec in another process, received over DDS.

This checks what the unit tests cannot: that rclpy accepts the messages ``to_image_msg`` and
``to_compressed_msg`` build, that a padded ``step`` survives serialization and transport (also for
Bayer, 4:2:2 and the two-plane nv12, whose padding follows every row of both planes), and that a
best-effort depth-1 subscriber (the localizer's camera QoS) gets them from a reliable publisher.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import requires_rclpy

# PAD is even (16-bit rows) and leaves bgr8 rows a step that is not a multiple of 3.
HEIGHT, WIDTH, SEED, PAD = 24, 32, 7, 10
TIMEOUT_S = 30.0

# Runs in a separate interpreter (``python -c``, cwd = repository root, so vpr_ros is importable).
PUBLISHER = """
import dataclasses, sys
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vpr_ros.io.image_codec import (
    rgb_to_compressed_fields, rgb_to_image_fields, to_compressed_msg, to_image_msg,
)

encoding = sys.argv[1]
height, width, seed, pad = map(int, sys.argv[2:])
rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
fields = rgb_to_image_fields(rgb, encoding)
buffer_rows = np.frombuffer(fields.data, np.uint8).reshape(-1, fields.step)  # 1.5 * height for nv12
rows = np.full((len(buffer_rows), fields.step + pad), 0xAB, np.uint8)  # padding bytes must be skipped
rows[:, : fields.step] = buffer_rows
fields = dataclasses.replace(fields, step=fields.step + pad, data=rows.tobytes())
compressed = rgb_to_compressed_fields(rgb, "png")

rclpy.init()
node = rclpy.create_node("image_codec_test_publisher")
image_pub = node.create_publisher(Image, "/test_image", 10)
compressed_pub = node.create_publisher(CompressedImage, "/test_image/compressed", 10)


def publish():
    header = Header(stamp=node.get_clock().now().to_msg(), frame_id="camera")
    image_pub.publish(to_image_msg(fields, Image, header))
    compressed_pub.publish(to_compressed_msg(compressed, CompressedImage, header))


node.create_timer(0.05, publish)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
"""


def pattern() -> np.ndarray:
    """The image the publisher sends (same generator, same seed)."""
    return np.random.default_rng(SEED).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _receive_both(node, executor, publisher) -> dict:
    """Spin until one Image and one CompressedImage arrived (bounded); fail with the publisher's output."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    camera_qos = QoSProfile(
        depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT
    )
    received: dict[str, object] = {}
    for key, msg_type, topic in (
        ("image", Image, "/test_image"),
        ("compressed", CompressedImage, "/test_image/compressed"),
    ):
        node.create_subscription(msg_type, topic, lambda m, k=key: received.setdefault(k, m), camera_qos)
    deadline = time.monotonic() + TIMEOUT_S
    while len(received) < 2 and time.monotonic() < deadline and publisher.poll() is None:
        executor.spin_once(timeout_sec=0.1)
    if len(received) < 2:
        publisher.kill()
        output = publisher.communicate(timeout=10)[0]
        raise AssertionError(
            f"received {sorted(received)} of ['compressed', 'image'] (limit {TIMEOUT_S} s); "
            f"publisher exit code {publisher.returncode}, output:\n{output}"
        )
    return received


@requires_rclpy
@pytest.mark.parametrize("encoding", ["bgr8", "bayer_rggb8", "yuv422_yuy2", "nv12", "bayer_grbg16"])
def test_image_and_compressed_image_survive_dds(ros_process, encoding: str) -> None:
    """The Image decodes exactly like the unpadded fields it was built from; bgr8 gives the pattern back."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from vpr_ros.io.image_codec import image_to_rgb, message_to_rgb, rgb_to_image_fields

    publisher = ros_process(["-c", PUBLISHER, encoding, str(HEIGHT), str(WIDTH), str(SEED), str(PAD)])
    context = Context()
    rclpy.init(args=None, context=context)
    try:
        node = rclpy.create_node("image_codec_test_subscriber", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        try:
            received = _receive_both(node, executor, publisher)
        finally:
            executor.shutdown()
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)

    image, compressed = received["image"], received["compressed"]
    sent = rgb_to_image_fields(pattern(), encoding)
    layout = (image.encoding, image.step, image.height, image.width)
    assert layout == (encoding, sent.step + PAD, HEIGHT, WIDTH)
    assert len(image.data) == len(sent.data) // sent.step * image.step  # every buffer row padded
    assert compressed.format == "rgb8; png compressed bgr8"
    expected = pattern() if encoding == "bgr8" else image_to_rgb(sent)
    for msg, want in ((image, expected), (compressed, pattern())):
        out = message_to_rgb(msg)
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, want)
