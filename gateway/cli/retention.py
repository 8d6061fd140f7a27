"""`gateway retention show|enforce`: the key topic's period keys, listed or erased past their retention."""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from gateway.cli.options import (
    add_settings,
    config_of,
)
from gateway.keys.period_keys import due_keys, summarize
from gateway.runtime.keytopic import enforce_retention, load_period_keys
from gateway.runtime.retention import summary_lines, summary_row


def cmd_retention(args: argparse.Namespace) -> int:
    config = config_of(args)
    now_ms = int(time.time() * 1000)
    periods = load_period_keys(config.kafka_client_config(), config.key_topic)
    if args.retention_cmd == "show":
        summaries = summarize(periods.names())
        if args.json:
            for s in summaries:
                sys.stdout.buffer.write(orjson.dumps(summary_row(s, now_ms)) + b"\n")
            return 0
        if not summaries:
            print(f"no period keys on '{config.key_topic}' (no field with a retention has been encrypted)")
            return 0
        print(f"period keys on '{config.key_topic}' at {_iso(now_ms)}; each period's keys are erased once it ended "
              "more than its retention ago")
        print("\n".join(summary_lines(summaries, now_ms)))
        return 0
    if args.dry_run:
        due = summarize(p.name for p in due_keys(periods.names(), now_ms))
        if not due:
            print(f"nothing to erase: no period key on '{config.key_topic}' is past its retention")
            return 0
        print(f"would erase {sum(len(s.key_ids) for s in due)} period key(s) of {len(due)} period(s) on "
              f"'{config.key_topic}' (dry run: nothing written)")
        print("\n".join(summary_lines(due, now_ms)))
        return 0
    events = enforce_retention(config, periods, now_ms)
    if not events:
        print(f"nothing to erase: no period key on '{config.key_topic}' is past its retention")
        return 0
    erased = [period for event in events for period in event["periods"]]
    print(f"erased {sum(e['keys_erased'] for e in events)} period key(s) of {len(erased)} period(s) on "
          f"'{config.key_topic}' (tombstones), {len(events)} audit event(s) on '{config.audit_topic}'. Running workers "
          "evict the keys within seconds; the ciphertexts of those periods can no longer be decrypted")
    for period in erased:
        print(f"  {period['retention_days']} day(s)  {period['period']}  {period['scope']}  "
              f"{period['keys_erased']} key(s)")
    return 0


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def add_parser(sub: argparse._SubParsersAction) -> None:
    retention = sub.add_parser("retention", help="retention by key expiry: list and erase the period keys of fields "
                                                 "with retention_days").add_subparsers(dest="retention_cmd",
                                                                                       required=True)
    p = retention.add_parser("show", help="list the key topic's periods: retention, period, key ids and when each "
                                          "is erased")
    p.add_argument("--json", action="store_true", help="one JSON object per period, every key id listed")
    add_settings(p, "bootstrap", "key_topic", "security")
    p = retention.add_parser("enforce", help="erase (tombstone) every period key whose period ended more than its "
                                             "retention ago, audited in the same transaction",
                             description="Workers do the same every retention_check_s. Use the workers' group_id "
                                         "(it prefixes the transactional id their runs and this one share, so they "
                                         "fence each other and the audit chain keys:retention has one writer).")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="list what would be erased; write nothing")
    add_settings(p, "bootstrap", "keyring", "key_topic", "audit_topic", "group_id", "security")
    sub.choices["retention"].set_defaults(func=cmd_retention)
