"""The steps of `gateway demo` after the sanitize path: consent gating a purpose view, a DP release
and the budget refusing once spent, forget and decrypt, audit verify and the HTML report.

Each step drives the functions the gateway's own commands call (`gateway consent` queues a raw
consent event, `gateway forget` erases through `forget_subject`, `gateway decrypt` opens fields with a
FieldDecryptor over the key topic, `gateway budget show` describes the ledger, `gateway audit verify`
and `gateway report --html`), while the real workers (`gateway run`, `gateway aggregate`) do the
work; the steps wait on what those workers commit (audit entries, output topics), never on a clock.
Identifiers printed are the demo's own sample identifiers (the raw side); what the gateway wrote
is shown as tokens, key ids and noisy values only.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.core.audit import ChainReport
from gateway.core.codec.sanitized import SanitizedDecoder
from gateway.core.decrypt import decrypt_record
from gateway.core.policy.plan import Plan
from gateway.dp.ledger import describe
from gateway.embedded.demo_policy import AGGREGATE, FORGOTTEN_FIELD, PURPOSE, SUBJECT_DOMAIN
from gateway.embedded.samples import SampleEvents, sample_maker
from gateway.errors import GatewayError
from gateway.keys.envelope import FieldDecryptor
from gateway.keys.keyring import Keyring
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from gateway.report.html import render
from gateway.runtime.audit_check import verify_audit_topic
from gateway.runtime.consent import queue_raw_consent
from gateway.runtime.keytopic import forget_subject, load_subject_keys, snapshot_subject_keys
from gateway.runtime.ledger import load_ledger
from gateway.runtime.reader import AuditFollower, read_topic
from gateway.runtime.report_inputs import period_report
from gateway.settings import GatewayConfig

T = TypeVar("T")
# the demo's own subjects for the consent and forget steps: outside the sample pool (user-00001 to
# user-00200), so their counts are theirs alone
SUBJECTS = ("user-90001", "user-90002", "user-90003")
REVOKER, FORGOTTEN = SUBJECTS[1], SUBJECTS[0]
PER_ROUND = 3  # payments per subject before and after the revocation


@dataclass
class Tour:
    """What the steps share: the settings, the plans, the keyring (the demo is the authorized consumer
    holding it), the audit topic followed from its beginning, and a check that the workers still run."""

    config: GatewayConfig
    plans: list[Plan]
    keyring: Keyring
    alive: Callable[[], None]  # raises when a worker has exited
    publish: Callable[[Plan, Sequence[dict[str, Any]]], None]  # raw events to the plan's source topic
    entries: list[dict[str, Any]] = field(default_factory=list)
    follower: AuditFollower | None = None

    def wait(self, found: Callable[[list[dict[str, Any]]], T | None], what: str, timeout_s: float = 90.0) -> T:
        """`found(every audit entry so far)` once it is not None; a GatewayError naming `what` after
        `timeout_s` or when a worker exits."""
        if self.follower is None:
            self.follower = AuditFollower(self.config.kafka_client_config(), self.config.audit_topic)
        deadline = time.monotonic() + timeout_s
        while True:
            result = found(self.entries)
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise GatewayError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            self.alive()
            self.entries += self.follower.poll(0.25)

    def close(self) -> None:
        if self.follower is not None:
            self.follower.close()

    def token(self, identifier: str) -> str:
        version, keys = self.keyring.token_keys(SUBJECT_DOMAIN)
        return DomainTokenizer(SUBJECT_DOMAIN, version, keys[version]).token(identifier)

    def events_audited(self, ids: set[str]) -> Callable[[list[dict[str, Any]]], bool | None]:
        def done(entries: list[dict[str, Any]]) -> bool | None:
            seen = {e.get("event", {}).get("event_id") for e in entries if e.get("type") == "event"}
            return True if ids <= seen else None
        return done


def _short(token: str) -> str:
    return token[:18] + "..."


def _clock(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).strftime("%H:%M:%S")


def _consent(tour: Tour, subject: str, granted: bool, at_ms: int) -> None:
    """What `gateway consent grant|revoke` does: the raw change on the consent input topic, where the
    worker tokenizes, stores and audits it."""
    queue_raw_consent(tour.config, {"subject": subject, "domain": SUBJECT_DOMAIN, "purpose": PURPOSE,
                                    "granted": granted, "at": at_ms})


def _round(tour: Tour, payments: Plan, make: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    records = []
    for subject in SUBJECTS:
        for _ in range(PER_ROUND):
            record = make()
            record.update(user_id=subject, occurred_at=int(time.time() * 1000))
            records.append(record)
    tour.publish(payments, records)
    tour.wait(tour.events_audited({r["event_id"] for r in records}), "the consent step's payments to be audited")
    return records


def consent_step(tour: Tour, number: int, payments: Plan) -> int:
    """Three subjects consent to the purpose; each pays; one revokes; each pays again. Returns the
    events published. Shows, per subject, its token and its events on the purpose topic."""
    print(f"{number}. consent: purpose '{PURPOSE}' (basis consent) publishes its view only while a subject's "
          "consent is in force", flush=True)
    granted_at = int(time.time() * 1000) - 60_000
    for subject in SUBJECTS:
        _consent(tour, subject, True, granted_at)
    tour.wait(lambda es: True if sum(e.get("outcome") == "consent:granted" for e in es) >= len(SUBJECTS) else None,
              "the consent grants to be stored")
    make = sample_maker(payments.schema, SampleEvents(11))
    sent = _round(tour, payments, make)
    _consent(tour, REVOKER, False, int(time.time() * 1000))
    tour.wait(lambda es: True if any(e.get("outcome") == "consent:revoked" for e in es) else None,
              "the revocation to be stored")
    sent += _round(tour, payments, make)
    purpose = next(p for p in payments.purposes if p.name == PURPOSE)
    views = SanitizedDecoder([purpose.plan])
    published = Counter(str(views.decode(r)[1]["user_id"]) for r in read_topic(tour.config.kafka_client_config(),
                                                                                purpose.topic))
    withheld = Counter(e["event"]["event_id"] for e in tour.entries if e.get("type") == "event"
                       and str(e.get("purposes", {}).get(PURPOSE, "")).startswith("withheld:"))
    print(f"   {', '.join(SUBJECTS)} consent (gateway consent grant) and pay {PER_ROUND} times each; {REVOKER} "
          f"revokes\n   (gateway consent revoke); each pays {PER_ROUND} more times. Events on '{purpose.topic}':")
    for subject in SUBJECTS:
        token = tour.token(subject)
        held = sum(withheld[r["event_id"]] for r in sent if r["user_id"] == subject)
        note = f"  <- revoked mid-run: {held} withheld (audited)" if subject == REVOKER else ""
        print(f"     {subject} = {_short(token)}  {published[token]} of {2 * PER_ROUND}{note}")
    return len(sent)


def dp_step(tour: Tour, number: int, payments: Plan, data_window_ms: int) -> None:
    """The window holding the sample payments, released with noise (read from the aggregates topic),
    the budget as `gateway budget show` reports it, then the first window the ledger refuses."""
    spec = next(a for a in payments.aggregates if a.name == AGGREGATE)
    print(f"{number}. differential privacy: '{spec.name}' counts payments per currency in {spec.window_ms // 1000} s "
          f"windows, epsilon {spec.epsilon:g} each, budget {spec.budget_epsilon_cap:g} per subject per "
          f"{spec.budget_period_ms // 3_600_000} h (gateway aggregate)", flush=True)

    def decisions(es: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
        return [e for e in es if e.get("type") == "dp_release" and e.get("aggregate") == spec.id
                and e["window"]["start"] == start]

    partitions = tour.config.partitions
    data = tour.wait(lambda es: d if len(d := decisions(es, data_window_ms)) >= partitions else None,
                     f"the window {_clock(data_window_ms)} to close (on each of {partitions} partitions)")
    if any(d["outcome"] != "released" for d in data):
        raise GatewayError(f"the window holding the sample payments was not released: {data[0]['outcome']}")
    kafka = tour.config.kafka_client_config()
    released = [orjson.loads(r.value or b"{}") for r in read_topic(kafka, spec.output_topic)]
    released = [r for r in released if r.get("aggregate") == spec.id and r["window"]["start"] == data_window_ms]
    window = f"{_clock(data_window_ms)}-{_clock(data_window_ms + spec.window_ms)}"
    if released:
        values = ", ".join(f"{'/'.join(map(str, r['group'].values()))} {r['value']}"
                           for r in sorted(released, key=lambda r: str(r["group"])))
        first = released[0]
        print(f"   window {window} released on '{spec.output_topic}': {values} (noisy counts, "
              f"+/-{first['error_95']:g} at 95%, epsilon {first['epsilon']:g}, {first['mechanism']})")
    else:  # key selection kept no currency: too few subjects in the window to release one safely
        print(f"   window {window} released with no group: no currency had enough subjects to pass key selection "
              "(publish more events: --events)")
    ledger = load_ledger(kafka, tour.config.ledger_topic)
    charged = {start: eps for start, (eps, _) in ledger.windows(spec.id).items()
               if data_window_ms - spec.budget_period_ms < start <= data_window_ms}
    print(f"   ledger: {len(charged)} window(s) charged through this one (each costs epsilon {spec.epsilon:g}, "
          f"data or not): {sum(charged.values()):g} of cap {spec.budget_epsilon_cap:g} spent, "
          f"{spec.budget_epsilon_cap - sum(charged.values()):g} left")
    def refusal(es: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((e for e in es if e.get("type") == "dp_release" and e.get("aggregate") == spec.id
                     and str(e.get("outcome")).startswith("refused:")), None)

    refused = tour.wait(refusal, "the ledger to refuse a window once the budget is spent")
    start = refused["window"]["start"]
    print(f"   window {_clock(start)}-{_clock(start + spec.window_ms)}: {refused['outcome']} (audited; nothing "
          "published)")
    specs = {a.id: a for p in tour.plans for a in p.aggregates}
    ledger = load_ledger(kafka, tour.config.ledger_topic)
    line = next(line for line in describe(ledger, specs).splitlines() if line.startswith("budget "))
    print(f"   gateway budget show: {line}")


def forget_step(tour: Tour, number: int, payments: Plan) -> None:
    """`gateway forget` one subject, then `gateway decrypt` every sanitized payment: the forgotten
    subject's per-subject field reports key_erased, everyone else's opens."""
    print(f"{number}. forget: erase {FORGOTTEN}'s keys (gateway forget), then decrypt every sanitized payment "
          "(gateway decrypt)", flush=True)
    config = tour.config
    kafka = config.kafka_client_config()
    _, token_keys = tour.keyring.token_keys(SUBJECT_DOMAIN)
    keys = SubjectKeys(tour.keyring)
    since = snapshot_subject_keys(kafka, config.key_topic, keys)
    event = forget_subject(config, FORGOTTEN, SUBJECT_DOMAIN, token_keys, keys, since)
    decryptor = FieldDecryptor(tour.keyring, subject_keys=load_subject_keys(kafka, config.key_topic,
                                                                          SubjectKeys(tour.keyring)))
    decoder = SanitizedDecoder(tour.plans)
    forgotten = tour.token(FORGOTTEN)
    outcomes: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    for stored in read_topic(kafka, payments.sanitized_topic):
        plan, record = decoder.decode(stored)
        _, report = decrypt_record(record, plan, decryptor)
        outcome = report.fields.get(FORGOTTEN_FIELD, "absent").split(":", 1)[0]  # "<reason>: <message>"
        outcomes[record.get(plan.subject_field or "") == forgotten][outcome] += 1
    print(f"   {event['keys_erased']} key(s) erased; {FORGOTTEN}'s {FORGOTTEN_FIELD}: {_outcomes(outcomes[True])}; "
          f"everyone else's: {_outcomes(outcomes[False])}")
    if set(outcomes[True]) != {"key_erased"} or set(outcomes[False]) != {"decrypted"}:
        raise GatewayError("forget did not make exactly the forgotten subject's fields unreadable")


def _outcomes(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "none"


def audit_step(tour: Tour, number: int, out: Path) -> tuple[ChainReport, Path]:
    """`gateway audit verify`, then `gateway report --html` of the last hour into `out`: the
    verification and the report's path."""
    print(f"{number}. audit: verify every chain (gateway audit verify) and write the report (gateway report "
          "--html)", flush=True)
    config = tour.config
    report = verify_audit_topic(config, config.audit_topic, config.group_id)
    status = "OK" if report.ok else f"BROKEN ({len(report.problems)} finding(s))"
    print(f"   audit chain {status}: {report.events} events in {report.records} records, {report.chains} chains")
    if not report.ok:
        raise GatewayError("the audit did not verify: " + "; ".join(p.message for p in report.problems))
    now_ms = int(time.time() * 1000)
    html = out / "report.html"
    html.write_text(render(period_report(config, tour.plans, now_ms - 3_600_000, now_ms + 1, now_ms, [])),
                    encoding="utf-8")
    print(f"   report written to {html}")
    return report, html
