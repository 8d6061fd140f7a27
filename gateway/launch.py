"""The entry of the `gateway` command and of `python -m gateway`: SIGTERM's handler before anything heavy.

Importing the command line imports every command's modules (the Kafka client, OpenDP, ...), which takes
most of a second; a SIGTERM in that time must still be a clean exit (gateway/stop_signal.py), so the
handler is installed by this module's first statement and the command line is imported after it."""

from gateway.stop_signal import exit_cleanly_on_sigterm

exit_cleanly_on_sigterm()

from gateway.cli import main  # noqa: E402 - after the handler, on purpose

__all__ = ["main"]
