"""Inputs and outputs: image decoding, rosbag2 reading, image/pose pairing, the match table, atomic files."""
