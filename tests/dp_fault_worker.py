"""`python -m tests.dp_fault_worker MODE <the arguments of gateway aggregate>`: the real aggregate
worker (OpenDP noise) with a fault injected at its release commit, the first time each set of
released records is published. A deterministic injection point the test chooses, no sleeps:

* ``abort``: the release's records are produced in a transaction, flushed to the broker, and the
  transaction is aborted (what a failed commit leaves in the log for a ``read_uncommitted`` reader);
  the loop rewinds as after any abort and the worker goes on, releasing the window again;
* ``kill``: the records are produced and flushed, then the process SIGKILLs itself before committing
  (the next worker of the same instance id fences the open transaction, which aborts).

It wraps the release loop's ``commit_now``, which every version of the worker calls to publish a
release, so the same test runs against older code."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

from gateway.cli import build_parser
from gateway.cli.options import config_of as _config
from gateway.core.policy.lint import load_plans
from gateway.errors import GatewayError
from gateway.ops.logs import setup_logging
from gateway.runtime.jobs.aggregate import AggregateWorker, ReleaseHandler
from gateway.runtime.transactional import BatchHandler, Output, TransactionalLoop

log = logging.getLogger("tests.dp_fault_worker")
MODES = ("abort", "kill")


class FaultWorker(AggregateWorker):
    mode = "abort"

    def _loop(self, stage: str, handler: BatchHandler, topics: list[str]) -> TransactionalLoop:
        loop = super()._loop(stage, handler, topics)  # type: ignore[arg-type]
        if isinstance(handler, ReleaseHandler):
            outputs = {spec.output_topic for spec in self.specs.values()}
            faulted: set[bytes] = set()
            commit_now = loop.commit_now

            def faulty_commit_now(output: Output) -> bool:
                keys = {r.key or b"" for r in output.records if r.topic in outputs}
                if not keys or keys <= faulted:
                    return commit_now(output)
                faulted.update(keys)
                self._fault(loop, output)
                return False

            loop.commit_now = faulty_commit_now  # type: ignore[method-assign]
        return loop

    def _fault(self, loop: TransactionalLoop, output: Output) -> None:
        loop.settle()
        loop.producer.begin_transaction()
        for r in output.records:
            loop.producer.produce(r.topic, r.value, r.key, partition=-1 if r.partition is None else r.partition,
                                  headers=r.headers, timestamp=r.timestamp_ms)
        assert loop.producer.flush(30) == 0
        log.warning("fault injected at the release commit", extra={"mode": self.mode,
                                                                    "records": len(output.records)})
        if self.mode == "kill":
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        loop.producer.abort_transaction(30)
        loop.rewind()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    mode, rest = args[0], args[1:]
    if mode not in MODES:
        print(f"tests.dp_fault_worker: MODE must be one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    parsed = build_parser().parse_args(["aggregate", *rest])
    setup_logging(parsed.log_level or "INFO")
    try:
        config = _config(parsed)
        worker = FaultWorker(config, load_plans(config.require_schemas_dir()))
    except GatewayError as exc:
        print(f"tests.dp_fault_worker: {exc}", file=sys.stderr)
        return 2
    worker.mode = mode
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
