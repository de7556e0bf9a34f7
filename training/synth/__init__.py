"""A seeded procedural town, rendered along a route under several conditions and written in the
on-disk formats of real VPR datasets and robot recordings (rosbag2, MSLS, Pittsburgh, TB-Places)."""
