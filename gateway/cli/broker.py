"""`gateway broker`: the embedded Apache Kafka broker (KRaft, one node), until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="run the embedded Apache Kafka broker (KRaft, one node) on 127.0.0.1")
    p.add_argument("--port", type=int, default=9092, help="the PLAINTEXT listener's port (default 9092)")
    p.add_argument("--data-dir", dest="data_dir", type=Path, default=None,
                   help="keep the storage here across restarts (default: a temporary directory, removed on exit)")
    sub.choices["broker"].set_defaults(func=cmd_broker)


def cmd_broker(args: argparse.Namespace) -> int:
    from gateway.embedded.broker import EmbeddedBroker

    broker = EmbeddedBroker(args.port, data_dir=args.data_dir)
    stop = {"now": False}

    def _stop(signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with broker:
        print(f"broker listening on {broker.bootstrap} (Apache Kafka {broker.version}, KRaft; "
              f"data: {broker.data_dir}; log: {broker.log_path})", flush=True)
        assert broker.process is not None
        while not stop["now"] and broker.process.poll() is None:
            time.sleep(0.2)
        code = broker.process.poll()
    return 0 if code in (None, 0, -15, 143) else int(code)
