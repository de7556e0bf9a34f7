"""vpr_bag_player as a separate process over real DDS, with the test as the localizer.

The bags are a short cut of the small synthetic world's first traverse (images, camera info and
odometry), so a replay takes about a second. The checks are what a replay evaluation relies on:
in flow mode every image arrives once, in bag order with the recorded bytes, and the next one only
after the answer to the previous one; an unanswered image is sent again, then counted lost; rate mode keeps
the recorded pacing; bad input ends the process with one line naming the problem.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import requires_rclpy
from ros_harness import RosHarness, header

pytestmark = requires_rclpy

FRAMES = 15
IMAGE_TOPIC = "/camera/image_raw"
ANSWER_TOPIC = "/test/answers"
PLAY_TIMEOUT_S = 60.0  # generous: a loaded 2-core machine starts processes slowly

Message = tuple[str, str, int, bytes]  # topic, type, bag timestamp ns, CDR data


def write_bag(path: Path, messages: list[Message]) -> Path:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    connections: dict[str, Any] = {}
    with Writer(path, version=Writer.VERSION_LATEST) as writer:
        for topic, msgtype, timestamp, data in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
            writer.write(connections[topic], timestamp, data)
    return path


def read_bag(path: Path) -> list[Message]:
    from vpr_ros.io.rosbag_source import bag_topics, iter_raw

    return list(iter_raw(path, list(bag_topics(path))))


def by_topic(messages: list[Message], topic: str) -> list[bytes]:
    return [data for name, _, _, data in messages if name == topic]


def on_the_wire(data: bytes) -> bytes:
    """``data`` as a subscriber receives it: DDS pads a payload with zeros to a multiple of 4 bytes
    (the 357-byte CameraInfo arrives as 360 bytes; images and odometry are multiples of 4)."""
    return data + bytes(-len(data) % 4)


@pytest.fixture(scope="module")
def short_bag(small_world, tmp_path_factory) -> Path:
    """The first FRAMES frames of the world's first bag, every topic."""
    source = sorted((small_world / "bags").iterdir())[0]
    messages = read_bag(source)
    last = [timestamp for topic, _, timestamp, _ in messages if topic == IMAGE_TOPIC][FRAMES - 1]
    return write_bag(tmp_path_factory.mktemp("bag_player") / "short", [m for m in messages if m[2] <= last])


def stamp_of_data(data: bytes) -> int:
    from vpr_ros.nodes.bag_player import header_stamp_ns

    return header_stamp_ns(data)


def record_raw(ros: RosHarness, msg_type: type, topic: str) -> list[tuple[float, bytes]]:
    """Serialized messages of ``topic`` as they came off the wire (reliable, depth 50)."""
    received: list[tuple[float, bytes]] = []
    ros.node.create_subscription(
        msg_type, topic, lambda d: received.append((time.monotonic(), d)), 50, raw=True
    )
    return received


def responder(ros: RosHarness, skip: Callable[[int, int], bool]) -> list[tuple[float, bytes]]:
    """The localizer's part: answer each image with a match table stamped like it, except the
    deliveries ``skip(stamp, how many times this stamp was seen before)`` says to ignore."""
    from sensor_msgs.msg import Image, PointCloud2

    answers = ros.publisher(PointCloud2, ANSWER_TOPIC, 50)
    received: list[tuple[float, bytes]] = []
    seen: dict[int, int] = {}

    def on_image(data: bytes) -> None:
        received.append((time.monotonic(), data))
        stamp = stamp_of_data(data)
        seen[stamp] = seen.get(stamp, 0) + 1
        if not skip(stamp, seen[stamp] - 1):
            answers.publish(PointCloud2(header=header(stamp, "map")))

    ros.node.create_subscription(Image, IMAGE_TOPIC, on_image, 50, raw=True)
    return received


def player_args(bag: Path, *params: str) -> list[str]:
    args = ["-m", "vpr_ros.nodes.bag_player", "--ros-args", "-p", f"bag:={bag}"]
    for param in params:
        args += ["-p", param]
    return [*args, "-r", f"answers:={ANSWER_TOPIC}"]


def play(ros: RosHarness, ros_process, bag: Path, *params: str) -> tuple[int, str]:
    """Start the player, spin the harness until it exits; its exit status and output."""
    proc = ros_process(player_args(bag, *params))
    ros.spin_until(lambda: proc.poll() is not None, PLAY_TIMEOUT_S)
    try:
        output, _ = proc.communicate(timeout=5.0)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the player did not finish within {PLAY_TIMEOUT_S} s")
    return proc.returncode, output


def summary(output: str) -> dict[str, int]:
    """The numbers of the player's last line: images, others, resent, lost."""
    found = re.search(
        r"published (\d+) images on \S+ \(\+(\d+) other messages\), (\d+) resent, (\d+) lost", output
    )
    assert found, output
    return dict(zip(("images", "others", "resent", "lost"), map(int, found.groups())))


def run_to_error(ros_process, bag: Path, *params: str) -> tuple[int, list[str]]:
    proc = ros_process(player_args(bag, *params))
    output, _ = proc.communicate(timeout=PLAY_TIMEOUT_S)
    return proc.returncode, output.strip().splitlines()


def test_flow_mode_plays_every_message_once_in_order_and_exact(short_bag, ros_process):
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import CameraInfo

    bag = read_bag(short_bag)
    with RosHarness("bag_player_flow") as ros:
        images = responder(ros, skip=lambda stamp, before: False)
        odometry = record_raw(ros, Odometry, "/odom")
        camera_info = record_raw(ros, CameraInfo, "/camera/camera_info")
        status, output = play(ros, ros_process, short_bag, "mode:=flow", "answer_timeout_s:=10.0")
        ros.spin_until(lambda: len(odometry) >= FRAMES and len(camera_info) >= FRAMES, 2.0)

    assert status == 0, output
    for received, topic in ((images, IMAGE_TOPIC), (odometry, "/odom"), (camera_info, "/camera/camera_info")):
        assert [data for _, data in received] == [on_the_wire(d) for d in by_topic(bag, topic)], topic
    assert summary(output) == {"images": FRAMES, "others": 2 * FRAMES, "resent": 0, "lost": 0}
    assert f"published {FRAMES} images on {IMAGE_TOPIC} " in output


def test_flow_mode_resends_an_unanswered_image(short_bag, ros_process):
    stamps = [stamp_of_data(data) for data in by_topic(read_bag(short_bag), IMAGE_TOPIC)]
    ignored = stamps[3]
    with RosHarness("bag_player_resend") as ros:
        images = responder(ros, skip=lambda stamp, before: stamp == ignored and before == 0)
        status, output = play(ros, ros_process, short_bag, "mode:=flow", "answer_timeout_s:=1.0")

    assert status == 0, output
    received = [stamp_of_data(data) for _, data in images]
    assert list(dict.fromkeys(received)) == stamps  # every image, in bag order
    first = received.index(ignored)
    assert received[first + 1] == ignored  # the next image waited for the answer to this one
    counts = summary(output)
    assert counts["images"] == FRAMES and counts["resent"] >= 1 and counts["lost"] == 0


def test_flow_mode_counts_a_never_answered_image_as_lost_and_goes_on(short_bag, ros_process):
    stamps = [stamp_of_data(data) for data in by_topic(read_bag(short_bag), IMAGE_TOPIC)]
    ignored = stamps[5]
    with RosHarness("bag_player_lost") as ros:
        images = responder(ros, skip=lambda stamp, before: stamp == ignored)
        status, output = play(
            ros, ros_process, short_bag, "mode:=flow", "answer_timeout_s:=1.0", "max_resends:=1"
        )

    assert status == 0, output
    received = [stamp_of_data(data) for _, data in images]
    assert list(dict.fromkeys(received)) == stamps
    assert received.count(ignored) == 2  # sent, resent once, given up
    assert f"image 5 (stamp {ignored} ns) not answered" in output
    assert summary(output)["lost"] == 1


def test_rate_mode_keeps_the_recorded_pacing(short_bag, ros_process):
    from sensor_msgs.msg import Image

    rate = 2.0
    bag = read_bag(short_bag)
    log_times = [timestamp for topic, _, timestamp, _ in bag if topic == IMAGE_TOPIC]
    with RosHarness("bag_player_rate") as ros:
        images = record_raw(ros, Image, IMAGE_TOPIC)
        status, output = play(ros, ros_process, short_bag, f"rate:={rate}")
        ros.spin_until(lambda: len(images) >= FRAMES, 2.0)

    assert status == 0, output
    assert [data for _, data in images] == [on_the_wire(d) for d in by_topic(bag, IMAGE_TOPIC)]
    recorded_s = (log_times[-1] - log_times[0]) * 1e-9
    played_s = images[-1][0] - images[0][0]
    assert played_s >= 0.7 * recorded_s / rate, (played_s, recorded_s)


def test_a_missing_bag_is_one_line_naming_it(tmp_path, ros_process):
    status, lines = run_to_error(ros_process, tmp_path / "nope")
    assert status == 2
    assert lines == [f"error: bag {tmp_path / 'nope'}: does not exist"]


def test_an_image_topic_not_in_the_bag_lists_the_bag_topics(short_bag, ros_process):
    status, lines = run_to_error(ros_process, short_bag, "image_topic:=/camera/nope")
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and "/camera/nope" in lines[0]
    for topic in (f"{IMAGE_TOPIC} (sensor_msgs/msg/Image)", "/odom (nav_msgs/msg/Odometry)"):
        assert topic in lines[0]


def test_a_bad_parameter_value_is_one_line_naming_it(short_bag, ros_process):
    status, lines = run_to_error(ros_process, short_bag, "mode:=fast")
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("error: mode must be one of rate, flow")


def test_repeated_image_stamps_are_refused_before_playing(short_bag, tmp_path, ros_process):
    messages = read_bag(short_bag)
    images = [i for i, m in enumerate(messages) if m[0] == IMAGE_TOPIC]
    topic, msgtype, timestamp, data = messages[images[4]]
    earlier = messages[images[3]][3]
    messages[images[4]] = (topic, msgtype, timestamp, data[:4] + earlier[4:12] + data[12:])
    bag = write_bag(tmp_path / "repeated", messages)

    status, lines = run_to_error(ros_process, bag, "mode:=flow")
    assert status == 2
    stamp = stamp_of_data(earlier)
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"message 4 has stamp {stamp} ns, which repeats {stamp} ns of message 3" in lines[0]


def test_no_subscriber_ends_with_status_1_naming_the_topic(short_bag, ros_process):
    status, lines = run_to_error(ros_process, short_bag, "start_timeout_s:=1.0")
    assert status == 1
    assert len(lines) == 1 and lines[0].startswith("error: ") and IMAGE_TOPIC in lines[0]
