"""Replay evaluation: ground truth from a bag, answers from the localizer, metrics and reports.

The same metrics are computed whether the answers came over DDS from the localization node
(``vpr_replay_evaluator``) or from the same steps run in-process (``vpr-eval``): both reduce a
query run to :class:`~vpr_ros.evaluation.answers.Answers` and hand it to
:func:`~vpr_ros.evaluation.metrics.evaluate`.
"""
