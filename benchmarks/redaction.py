"""Free-text redaction: gateway.core.detectors beside Presidio's predefined pattern recognizers, on labelled corpora.

    python -m benchmarks.redaction [--texts N] [--reps R] [--json PATH]

The corpora are tests/unit/redaction_corpus.py's: `corpus()` (support notes, log lines, chat
messages with planted entities and near-misses) and `side_door_corpus()` (only the shapes an
outside review found missed or misread, at least 2,000 mentions, and 2,000 look-alikes: failed
checksums, versions, case and order numbers). Quality is scored on both; cost on both together.
Three things are timed in process CPU time, interleaved rep by rep so a change in the machine's
load hits all of them, and the median rep is reported (MB/s is per core: one process, CPU time):

- gateway: `detector().find()` then `redact(..., placeholder)` for every text
- presidio analyzer: an AnalyzerEngine whose registry holds only the predefined recognizers for
  the same entity types (Email, Phone, CreditCard, Iban, UsSsn, UkNino, EsNif, EsNie, ItFiscalCode,
  DeTaxId, Ip, Url) and whose NLP engine is Presidio's NoOpNlpEngine: no spaCy model is loaded
- presidio analyzer + anonymizer: the above, then AnonymizerEngine's default replace ("<ENTITY>")

Both sides are scored with the corpus's rule (same entity, prediction covers at least half the
planted span), Presidio's results after the same overlap resolution the gateway applies (longer
span wins, then higher score). Presidio has no credentials-in-URL detector: its UrlRecognizer
stands in for URL_CREDENTIALS, so its precision there counts every other URL it reports. It has
no French NIR or Dutch BSN recognizer either: those planted ids count against its recall.

A last row times the gateway alone on digit groups ("4111 " repeated, 200 KB): the input that cost
phone detection about 10 s per MB before its windows and length pre-filter.

Offline: EmailRecognizer calls tldextract, whose default extractor fetches the public suffix list
over the network. Here the recognizer module's `tldextract` is replaced by an extractor built with
no suffix list URLs and no cache (the snapshot bundled with tldextract), the environment variable
disables the URLs for any other instance, and a socket guard refuses (and counts) every connection
attempt for the whole run; the figures report that count, which must be 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.core.detectors import detector, placeholder, redact
from tests.unit.redaction_corpus import Sample, corpus, score, side_door_corpus

# Presidio entity -> gateway entity
PRESIDIO_ENTITIES = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "NATIONAL_ID",
    "UK_NINO": "NATIONAL_ID",
    "ES_NIF": "NATIONAL_ID",
    "ES_NIE": "NATIONAL_ID",
    "IT_FISCAL_CODE": "NATIONAL_ID",
    "DE_TAX_ID": "NATIONAL_ID",
    "IP_ADDRESS": "IP",
    "URL": "URL_CREDENTIALS",
}


# ---- no network ------------------------------------------------------------------------------
class _NoNetwork:
    """Refuses every socket connection while installed; counts the attempts so the run can prove there were none."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._connect = socket.socket.connect
        self._connect_ex = socket.socket.connect_ex
        self._getaddrinfo = socket.getaddrinfo

    def install(self) -> None:
        guard = self

        def refuse(_sock: socket.socket, address: Any, *_: Any) -> None:
            guard.attempts.append(repr(address))
            raise OSError(f"benchmarks.redaction: network refused ({address!r})")

        def refuse_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
            guard.attempts.append(repr(host))
            raise OSError(f"benchmarks.redaction: name lookup refused ({host!r})")

        socket.socket.connect = refuse  # type: ignore[method-assign]
        socket.socket.connect_ex = refuse  # type: ignore[method-assign]
        socket.getaddrinfo = refuse_lookup

    def uninstall(self) -> None:
        socket.socket.connect = self._connect  # type: ignore[method-assign]
        socket.socket.connect_ex = self._connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = self._getaddrinfo


def _offline_tldextract() -> None:
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""  # read by every TLDExtract built after this
    import tldextract
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer

    offline = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())

    class _Shim:
        extract = staticmethod(offline)

    email_recognizer.tldextract = _Shim  # the recognizer calls tldextract.extract(...)


# ---- the two sides ---------------------------------------------------------------------------
def gateway_redactor() -> Callable[[str], str]:
    d = detector()

    def run(text: str) -> str:
        return redact(text, d.find(text), placeholder)

    return run


def presidio_engines() -> tuple[Any, Any]:
    """An AnalyzerEngine with only the predefined pattern recognizers for our entity types, and no NLP model."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DeTaxIdRecognizer,
        EmailRecognizer,
        EsNieRecognizer,
        EsNifRecognizer,
        IbanRecognizer,
        IpRecognizer,
        ItFiscalCodeRecognizer,
        PhoneRecognizer,
        UkNinoRecognizer,
        UrlRecognizer,
        UsSsnRecognizer,
    )
    from presidio_anonymizer import AnonymizerEngine

    recognizers = [
        cls(supported_language="en")
        for cls in (
            EmailRecognizer,
            PhoneRecognizer,
            CreditCardRecognizer,
            IbanRecognizer,
            UsSsnRecognizer,
            UkNinoRecognizer,
            EsNifRecognizer,
            EsNieRecognizer,
            ItFiscalCodeRecognizer,
            DeTaxIdRecognizer,
            IpRecognizer,
            UrlRecognizer,
        )
    ]
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
    return analyzer, AnonymizerEngine()


def resolve_overlaps(results: list[Any]) -> list[tuple[str, int, int]]:
    """Presidio's results as non-overlapping (entity, start, end), resolved as gateway.core.detectors resolves its own.

    The analyzer reports every recognizer's hit, overlaps included (the URL inside an email, the
    phone inside a card); what a redaction can use is one entity per character, so the longer
    span wins, then the higher score. Scoring the raw results would count each overlap against
    Presidio's precision.
    """
    kept: list[tuple[str, int, int]] = []
    for r in sorted(results, key=lambda r: (r.start - r.end, -r.score, r.start)):
        if all(r.end <= start or end <= r.start for _, start, end in kept):
            kept.append((PRESIDIO_ENTITIES[r.entity_type], r.start, r.end))
    return sorted(kept, key=lambda k: k[1])


# ---- measuring -------------------------------------------------------------------------------
def _cpu(fn: Callable[[str], Any], texts: list[str]) -> float:
    t0 = time.process_time()
    for text in texts:
        fn(text)
    return time.process_time() - t0


def _figures(cpu_s: float, kb: float, records: int) -> dict[str, float]:
    return {"cpu_s": cpu_s, "ms_per_kb": cpu_s * 1e3 / kb, "us_per_record": cpu_s * 1e6 / records,
            "mb_per_s": kb / 1024 / cpu_s}


def run(texts: int = 800, reps: int = 5) -> dict[str, Any]:
    """Quality and cost figures for the gateway and Presidio on `texts` corpus texts (see the module docstring)."""
    guard = _NoNetwork()
    guard.install()
    try:
        return _run(texts, reps, guard)
    finally:
        guard.uninstall()


def _run(texts: int, reps: int, guard: _NoNetwork) -> dict[str, Any]:
    _offline_tldextract()
    samples: list[Sample] = corpus(texts)
    side_door: list[Sample] = side_door_corpus()
    bodies = [s.text for s in samples + side_door]
    kb = sum(len(t.encode()) for t in bodies) / 1024

    d = detector()
    analyzer, anonymizer = presidio_engines()

    def presidio_analyze(text: str) -> list[Any]:
        return analyzer.analyze(text, language="en")

    def presidio_redact(text: str) -> str:
        return anonymizer.anonymize(text=text, analyzer_results=analyzer.analyze(text, language="en")).text

    def presidio_spans(text: str) -> list[tuple[str, int, int]]:
        return resolve_overlaps(presidio_analyze(text))

    def gateway_spans(text: str) -> list[tuple[str, int, int]]:
        return [(m.entity, m.start, m.end) for m in d.find(text)]

    quality = {"gateway": score(samples, gateway_spans), "presidio": score(samples, presidio_spans)}
    side_door_quality = {"gateway": score(side_door, gateway_spans), "presidio": score(side_door, presidio_spans)}

    sides: dict[str, Callable[[str], Any]] = {
        "gateway": gateway_redactor(),
        "presidio_analyzer": presidio_analyze,
        "presidio_analyzer_anonymizer": presidio_redact,
    }
    for fn in sides.values():  # warm caches (phonenumbers metadata, regex compilation) outside the timing
        for text in bodies[:50]:
            fn(text)
    timings: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, fn in sides.items():
            timings[name].append(_cpu(fn, bodies))
    cost = {name: _figures(statistics.median(values), kb, len(bodies)) for name, values in timings.items()}
    gw = cost["gateway"]["ms_per_kb"]
    digits = "4111 " * 40_000
    gateway = sides["gateway"]
    digit_groups = _figures(statistics.median(_cpu(gateway, [digits]) for _ in range(reps)),
                            len(digits) / 1024, 1)
    return {
        "texts": len(samples),
        "side_door_texts": len(side_door),
        "kb": round(kb, 1),
        "planted": sum(len(s.spans) for s in samples),
        "side_door_planted": sum(len(s.spans) for s in side_door),
        "side_door_near_misses": sum(s.near_misses for s in side_door),
        "reps": reps,
        "cost": cost,
        "gateway_digit_groups": digit_groups,
        "speedup_vs_presidio_analyzer": cost["presidio_analyzer"]["ms_per_kb"] / gw,
        "speedup_vs_presidio_analyzer_anonymizer": cost["presidio_analyzer_anonymizer"]["ms_per_kb"] / gw,
        "quality": quality,
        "side_door_quality": side_door_quality,
        "network_attempts": len(guard.attempts),
    }


def print_table(fig: dict[str, Any]) -> None:
    print(f"redaction corpora: {fig['texts']} + {fig['side_door_texts']} side-door texts, {fig['kb']} KB, "
          f"{fig['planted']} + {fig['side_door_planted']} planted entities, {fig['side_door_near_misses']} "
          f"side-door look-alikes; CPU time, median of {fig['reps']} interleaved reps")
    print(f"{'':32} {'ms/KB':>9} {'MB/s':>7} {'us/record':>10}")
    for name, c in fig["cost"].items():
        print(f"{name:32} {c['ms_per_kb']:9.3f} {c['mb_per_s']:7.3f} {c['us_per_record']:10.1f}")
    dg = fig["gateway_digit_groups"]
    print(f"{'gateway, 200 KB of digit groups':32} {dg['ms_per_kb']:9.3f} {dg['mb_per_s']:7.3f}")
    print(f"gateway speed-up per KB: {fig['speedup_vs_presidio_analyzer']:.1f}x vs the analyzer, "
          f"{fig['speedup_vs_presidio_analyzer_anonymizer']:.1f}x vs analyzer + anonymizer")
    for title, key in (("corpus", "quality"), ("side-door shapes", "side_door_quality")):
        print()
        print(f"{title:16} {'gateway recall':>15} {'precision':>10} {'presidio recall':>16} {'precision':>10}")
        gw, pr = fig[key]["gateway"], fig[key]["presidio"]
        for entity in sorted(set(gw) | set(pr)):
            g = gw.get(entity, {"recall": float("nan"), "precision": float("nan")})
            p = pr.get(entity, {"recall": float("nan"), "precision": float("nan")})
            note = "  (presidio: URL recognizer)" if entity == "URL_CREDENTIALS" else ""
            row = f"{g['recall']:15.3f} {g['precision']:10.3f} {p['recall']:16.3f} {p['precision']:10.3f}"
            print(f"{entity:16} {row}{note}")
    print(f"network connection attempts: {fig['network_attempts']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redaction", description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=800, help="corpus texts (default 800)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved timing reps (default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    fig = run(args.texts, args.reps)
    print_table(fig)
    blob = orjson.dumps(fig, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    if args.json:
        args.json.write_bytes(blob)
    print(blob.decode())
    return 0 if fig["network_attempts"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
