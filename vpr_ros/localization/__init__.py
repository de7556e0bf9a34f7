"""Localization from place-map answers: the sequence filter over consecutive frames."""
