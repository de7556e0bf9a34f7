"""Training stack of vpr_ros: datasets, the synthetic world, losses, models and export.

Run it as ``python -m training <verb>``; the runtime package ``vpr_ros`` never imports it.
"""
