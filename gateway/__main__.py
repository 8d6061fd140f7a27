"""`python -m gateway`: SIGTERM's handler first (gateway/stop_signal.py), then the command line."""

from gateway.stop_signal import exit_cleanly_on_sigterm

exit_cleanly_on_sigterm()

from gateway.cli import main  # noqa: E402 - after the handler, on purpose

raise SystemExit(main())
