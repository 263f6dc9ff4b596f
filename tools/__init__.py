"""The absl binaries; installed as the `tf_segunravel.tools` package with console entry points
(setup.py), and run from a checkout as `python3 tools/<name>.py`."""
