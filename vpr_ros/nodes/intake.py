"""Camera callbacks on a thread of their own, off the node's multi-threaded executor.

rclpy's ``MultiThreadedExecutor`` hands each ready callback from the thread that waits to one of
its pool threads. Measured with ``benchmarks/localizer_latency.py`` (2 vCPUs, one inference
thread), the time from the DDS reception of an image to the localizer's callback was 14-29 ms
p50 under that executor and 0.7-1.9 ms under a ``SingleThreadedExecutor``, where the waiting
thread runs the callback itself. The node keeps the multi-threaded executor for what must run
concurrently (a ``~/relocalize`` call waits for a fix, a map reload takes seconds); its image
subscriptions live on a small helper node, ``<node>_image_intake`` in the same namespace and
context, spun by a single-threaded executor on this thread. Its callbacks only hand the frame to
the node's mailbox.

The helper takes no command-line arguments (remaps, ``__node``): it subscribes to topic names the
node has already resolved, so a launch file's remaps apply exactly as they would to the node.
"""

from __future__ import annotations

import contextlib
import threading

from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

SHUTDOWN_TIMEOUT_S = 5.0


class ImageIntake:
    """A helper node and the thread that spins it; :meth:`close` stops both (before the process
    exits: a thread left running kept rclpy from destroying the DDS participant)."""

    def __init__(self, owner: Node) -> None:
        self.node = Node(
            f"{owner.get_name()}_image_intake",
            namespace=owner.get_namespace(),
            context=owner.context,
            use_global_arguments=False,
            start_parameter_services=False,
        )
        self.executor = SingleThreadedExecutor(context=owner.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(
            target=self._spin, name=f"{owner.get_name()}_image_intake", daemon=True
        )
        self.thread.start()

    def _spin(self) -> None:
        # The context shut down (SIGINT) ends the spin with this exception: nothing to finish.
        with contextlib.suppress(ExternalShutdownException):
            self.executor.spin()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=SHUTDOWN_TIMEOUT_S)
        self.thread.join(timeout=SHUTDOWN_TIMEOUT_S)
        self.node.destroy_node()
