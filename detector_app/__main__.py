"""``python -m detector_app`` = the ``detector-app`` command."""

from detector_app.cli import main

main()
