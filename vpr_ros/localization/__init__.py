"""Localization from place-map answers: one frame's pose, the sequence filter, the robot's pose in REP 105."""
