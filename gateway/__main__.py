"""`python -m gateway`: gateway/launch.py installs SIGTERM's handler first, then imports the command line."""

from gateway.launch import main

raise SystemExit(main())
