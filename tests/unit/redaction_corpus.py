"""A labelled corpus for the PII detectors: support notes, log lines and chat messages with planted entities.

Seeded and deterministic: `corpus()` returns the same texts on every machine. Each planted value is
generated valid by construction (Luhn digits, mod-97 keys, check letters computed here; phone
numbers kept only when libphonenumber's numbering plan accepts them), in several written formats
per entity type (FORMATS). Near-misses (NEAR_MISSES) are strings that look like PII but are not:
Luhn-invalid card-like numbers, versions, dates, amounts, ISBNs, bad IBAN checksums, emails without
a TLD, SSNs in ranges never issued. They are planted unlabelled, so finding one costs precision.

SIDE_DOOR_FORMATS and SIDE_DOOR_NEAR_MISSES are the shapes an outside review found missed or
misread (cards after a comma, glued to a label, split by dots, double or no-break spaces; e-mail
addresses with non-ASCII or IDN parts; lower-case and dashed IBANs; spaced and bare SSNs;
00-prefixed international phones; phones in parentheses) and their look-alikes (the same shapes
with failed checksums, five-part versions, case and order numbers). `side_door_corpus()` plants
only those, at least 2,000 mentions and 2,000 near-misses.

The scoring rule (`score`): a predicted span counts for a ground-truth span when both have the same
entity type and the prediction covers at least half of the ground-truth span; each ground-truth
span pairs with at most one prediction. Half-coverage accepts boundary differences (a "+" or the
parentheses of a phone, a URL's path) and rejects fragments (four digits of a card found as
something else leave most of it in the clear).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.iso7064 import mod_11_10
from stdnum.it import codicefiscale

SEED = 20240611


@dataclass(frozen=True, slots=True)
class Span:
    entity: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    spans: tuple[Span, ...]
    near_misses: int = 0  # unlabelled look-alikes planted in the text


@dataclass(frozen=True, slots=True)
class Planted:
    """A value to plant, with the text written right before and after it (context words, a port: not in the span)."""

    value: str
    lead: str = ""
    tail: str = ""


Gen = Callable[[random.Random], Planted]


def _digits(r: random.Random, n: int) -> str:
    return "".join(r.choice(string.digits) for _ in range(n))


def _upper(r: random.Random, n: int) -> str:
    return "".join(r.choice(string.ascii_uppercase) for _ in range(n))


def _groups(value: str, sizes: Iterable[int], sep: str) -> str:
    out, pos = [], 0
    for size in sizes:
        out.append(value[pos : pos + size])
        pos += size
    return sep.join(out)


# --- EMAIL ---------------------------------------------------------------------------------------

_FIRST = ["jane", "john", "maria", "li", "ahmed", "olga", "pierre", "sven", "ana", "kwame", "yuki", "noah"]
_LAST = ["doe", "smith", "garcia", "wang", "hassan", "ivanova", "martin", "berg", "silva", "mensah", "sato"]
_DOMAINS = ["example.com", "example.org", "acme-corp.io", "mailbox.de", "post.example.fr", "shop.example.net"]
_SUBDOMAINS = ["mail.example.co.uk", "eu.support.acme.com", "students.uni-example.edu", "corp.mail.example.com.au"]


def _email_plain(r: random.Random) -> Planted:
    return Planted(f"{r.choice(_FIRST)}.{r.choice(_LAST)}@{r.choice(_DOMAINS)}")


def _email_plus(r: random.Random) -> Planted:
    tag = r.choice(["billing", "news", "shop", "2024", "work_stuff"])
    return Planted(f"{r.choice(_FIRST)}+{tag}@{r.choice(_DOMAINS)}")


def _email_subdomain(r: random.Random) -> Planted:
    return Planted(f"{r.choice(_FIRST)}_{r.choice(_LAST)}{r.randint(1, 99)}@{r.choice(_SUBDOMAINS)}")


def _email_upper(r: random.Random) -> Planted:
    return Planted(f"{r.choice(_FIRST)}.{r.choice(_LAST)}@{r.choice(_DOMAINS)}".upper())


def _email_angle(r: random.Random) -> Planted:
    return Planted(_email_plain(r).value, lead=f"{r.choice(_FIRST).title()} <", tail=">")


def _email_mailto(r: random.Random) -> Planted:
    return Planted(_email_plus(r).value, lead="mailto:")


# --- PHONE ---------------------------------------------------------------------------------------

_US_AREAS = ["212", "415", "617", "312", "206", "303", "512", "646", "702", "919", "305", "404"]


def _us_number(r: random.Random) -> tuple[str, str, str]:
    while True:
        area, exchange, line = r.choice(_US_AREAS), str(r.randint(201, 999)), _digits(r, 4)
        if exchange[1:] == "11" or exchange == "555":
            continue
        if phonenumbers.is_valid_number(phonenumbers.parse(f"+1{area}{exchange}{line}")):
            return area, exchange, line


def _phone_us(style: str) -> Gen:
    def gen(r: random.Random) -> Planted:
        a, e, n = _us_number(r)
        return Planted(style.format(a=a, e=e, n=n))

    return gen


def _phone_intl(region: str, kind: phonenumbers.PhoneNumberType, fmt: phonenumbers.PhoneNumberFormat) -> Gen:
    example = phonenumbers.example_number_for_type(region, kind)

    def gen(r: random.Random) -> Planted:
        national = str(example.national_number)
        for _ in range(50):
            candidate = phonenumbers.parse(f"+{example.country_code}{national[:-4]}{_digits(r, 4)}")
            if phonenumbers.is_valid_number(candidate):
                return Planted(phonenumbers.format_number(candidate, fmt))
        return Planted(phonenumbers.format_number(example, fmt))

    return gen


def _gb_trunk(r: random.Random) -> Planted:
    """The British habit of keeping the trunk zero in brackets: +44 (0)20 7946 0123."""
    national = _phone_intl("GB", phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberFormat.NATIONAL)(r)
    return Planted("+44 (0)" + national.value[1:])


_MOBILE, _FIXED = phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE
_INTL, _E164 = phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164


# --- CARD ----------------------------------------------------------------------------------------


def _luhn_complete(prefix: str, length: int, r: random.Random) -> str:
    body = prefix + _digits(r, length - len(prefix) - 1)
    return body + luhn.calc_check_digit(body)


def _card(prefixes: Callable[[random.Random], str], length: int, sizes: tuple[int, ...], sep: str) -> Gen:
    def gen(r: random.Random) -> Planted:
        number = _luhn_complete(prefixes(r), length, r)
        return Planted(_groups(number, sizes, sep) if sep else number)

    return gen


def _visa(r: random.Random) -> str:
    return "4"


def _mastercard(r: random.Random) -> str:
    return str(r.randint(51, 55))


def _mastercard2(r: random.Random) -> str:
    return str(r.randint(2221, 2720))


def _amex(r: random.Random) -> str:
    return r.choice(["34", "37"])


def _discover(r: random.Random) -> str:
    return "6011"


# --- IBAN ----------------------------------------------------------------------------------------

# BBAN layouts (n: digits, a: capitals, c: capitals or digits), as in the SWIFT IBAN registry
_BBAN = {
    "DE": "18n",
    "GB": "4a14n",
    "FR": "10n11c2n",
    "NL": "4a10n",
    "IT": "1a10n12c",
    "CH": "5n12c",
    "AT": "16n",
    "PL": "24n",
}


def _bban(layout: str, r: random.Random) -> str:
    out, count = [], ""
    for ch in layout:
        if ch.isdigit():
            count += ch
            continue
        n, count = int(count), ""
        if ch == "n":
            out.append(_digits(r, n))
        elif ch == "a":
            out.append(_upper(r, n))
        else:
            out.append("".join(r.choice(string.digits * 3 + string.ascii_uppercase) for _ in range(n)))
    return "".join(out)


def make_iban(country: str, r: random.Random) -> str:
    bban = _bban(_BBAN[country], r)
    number = country + iban.calc_check_digits(country + "00" + bban) + bban
    assert iban.is_valid(number), number
    return number


def _iban(spaced: bool) -> Gen:
    def gen(r: random.Random) -> Planted:
        number = make_iban(r.choice(sorted(_BBAN)), r)
        return Planted(iban.format(number) if spaced else number)

    return gen


# --- NATIONAL_ID ---------------------------------------------------------------------------------


def _ssn(r: random.Random) -> Planted:
    area = r.choice([a for a in range(1, 900) if a != 666])
    return Planted(f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}", r.choice(["", "SSN ", "ssn: "]))


_NINO_FIRST, _NINO_SECOND = "ABCEGHJKLMNOPRSTWXYZ", "ABCEGHJKLMNPRSTWXYZ"


def _nino(spaced: bool) -> Gen:
    def gen(r: random.Random) -> Planted:
        while (prefix := r.choice(_NINO_FIRST) + r.choice(_NINO_SECOND)) in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
            pass
        digits, suffix = _digits(r, 6), r.choice("ABCD")
        value = f"{prefix} {digits[:2]} {digits[2:4]} {digits[4:]} {suffix}" if spaced else prefix + digits + suffix
        return Planted(value, r.choice(["", "NI number ", "NINO: "]))

    return gen


def make_idnr(r: random.Random) -> str:
    while True:
        pool = r.sample(string.digits, 9)
        body = pool + [r.choice(pool)]
        r.shuffle(body)
        if body[0] != "0":
            number = "".join(body)
            return number + mod_11_10.calc_check_digit(number)


def _idnr(r: random.Random) -> Planted:
    number = make_idnr(r)
    value = _groups(number, (2, 3, 3, 3), " ") if r.random() < 0.4 else number
    return Planted(value, r.choice(["Steuer-ID ", "Steuer-IdNr.: ", "tax id ", "IdNr "]))


def make_nir(r: random.Random) -> str:
    dept = r.choice([f"{d:02d}" for d in range(1, 96) if d != 20] + ["2A", "2B"])
    sex, year, month = r.randint(1, 2), r.randint(0, 99), r.randint(1, 12)
    body = f"{sex}{year:02d}{month:02d}{dept}{r.randint(1, 990):03d}{r.randint(1, 999):03d}"
    return body + nir.calc_check_digits(body + "00")


def _nir(spaced: bool) -> Gen:
    def gen(r: random.Random) -> Planted:
        number = make_nir(r)
        if spaced:
            return Planted(_groups(number, (1, 2, 2, 2, 3, 3, 2), " "), r.choice(["", "NIR "]))
        return Planted(number, r.choice(["NIR ", "numéro de sécurité sociale ", "INSEE: "]))

    return gen


def _dni(r: random.Random) -> Planted:
    body = _digits(r, 8)
    return Planted(body + r.choice(["", "-"]) + dni.calc_check_digit(body), r.choice(["", "DNI "]))


def _nie(r: random.Random) -> Planted:
    body = r.choice("XYZ") + _digits(r, 7)
    return Planted(body + nie.calc_check_digit(body), r.choice(["", "NIE "]))


def make_bsn(r: random.Random) -> str:
    while True:
        body = _digits(r, 8)
        check = sum((9 - i) * int(d) for i, d in enumerate(body)) % 11
        if check < 10 and body[0] != "0":
            return body + str(check)


def _bsn(r: random.Random) -> Planted:
    return Planted(make_bsn(r), r.choice(["BSN ", "burgerservicenummer: ", "BSN: "]))


def _codice_fiscale(r: random.Random) -> Planted:
    day = r.randint(1, 28) + r.choice([0, 40])
    body = f"{_upper(r, 6)}{r.randint(0, 99):02d}{r.choice('ABCDEHLMPRST')}{day:02d}{r.choice('ADFHLZ')}{_digits(r, 3)}"
    return Planted(body + codicefiscale.calc_check_digit(body), r.choice(["", "codice fiscale "]))


# --- IP ------------------------------------------------------------------------------------------


def _ipv4_private(r: random.Random) -> Planted:
    if r.random() < 0.5:
        return Planted(f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}")
    return Planted(f"192.168.{r.randint(0, 255)}.{r.randint(1, 254)}")


def _ipv4_public(r: random.Random) -> Planted:
    return Planted(f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}")


def _hex4(r: random.Random) -> str:
    return f"{r.randint(1, 0xFFFF):x}"


def _ipv6_full(r: random.Random) -> Planted:
    return Planted(":".join(f"{r.randint(0, 0xFFFF):04x}" for _ in range(8)))


def _ipv6_compressed(r: random.Random) -> Planted:
    return Planted(f"2001:db8:{_hex4(r)}::{_hex4(r)}:{_hex4(r)}")


def _ipv6_link_local(r: random.Random) -> Planted:
    return Planted(f"fe80::{_hex4(r)}:{_hex4(r)}:{_hex4(r)}:{_hex4(r)}")


def _ipv4_port(r: random.Random) -> Planted:
    return Planted(_ipv4_public(r).value, tail=f":{r.choice([443, 8080, 5432, 9092])}")


def _ipv6_bracketed(r: random.Random) -> Planted:
    return Planted(_ipv6_compressed(r).value, lead="[", tail=f"]:{r.choice([443, 8443])}")


def _ipv6_mapped(r: random.Random) -> Planted:
    return Planted(f"::ffff:{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}")


# --- URL_CREDENTIALS -----------------------------------------------------------------------------


def _password(r: random.Random) -> str:
    return "".join(r.choice(string.ascii_letters + string.digits + "-_!~") for _ in range(r.randint(6, 16)))


def _url(template: str) -> Gen:
    def gen(r: random.Random) -> Planted:
        return Planted(template.format(user=r.choice(_FIRST), pw=_password(r), n=r.randint(1, 9)))

    return gen


# --- the side-door shapes ------------------------------------------------------------------------

_NBSP = ["\u00a0", "\u202f", "\u2009"]  # no-break, narrow no-break, thin space


def _card_number(r: random.Random) -> str:
    return _luhn_complete(r.choice([_visa, _mastercard, _mastercard2, _discover])(r), 16, r)


def _card_csv(r: random.Random) -> Planted:
    """A CSV line: name, card, expiry ("alice,4111111111111111,12/26")."""
    return Planted(_card_number(r), lead=f"{r.choice(_FIRST)},", tail=f",{r.randint(1, 12):02d}/{r.randint(25, 31)}")


def _card_glued(r: random.Random) -> Planted:
    return Planted(_card_number(r), lead=r.choice(["CC-", "CC", "cc#", "PAN:", "card_"]))


def _card_sep(sep: Callable[[random.Random], str]) -> Gen:
    def gen(r: random.Random) -> Planted:
        return Planted(_groups(_card_number(r), (4, 4, 4, 4), sep(r)))

    return gen


_UNICODE_FIRST = ["josé", "zoë", "françois", "łukasz", "søren", "müller", "ñuñez", "çelik", "đorđe", "ανδρέας"]
_IDN_DOMAINS = ["bücher.de", "münchen-café.example", "例え.jp", "пример.рф", "exämple.com", "straße.info",
                "xn--bcher-kva.example", "mañana.es"]


def _email_unicode_local(r: random.Random) -> Planted:
    return Planted(f"{r.choice(_UNICODE_FIRST)}.{r.choice(_LAST)}@{r.choice(_DOMAINS)}")


def _email_idn(r: random.Random) -> Planted:
    return Planted(f"{r.choice(_FIRST)}{r.randint(1, 99)}@{r.choice(_IDN_DOMAINS)}")


def _email_all_unicode(r: random.Random) -> Planted:
    return Planted(f"{r.choice(['用户', 'почта', 'δοκιμή', 'josé'])}@{r.choice(_IDN_DOMAINS[:4])}")


def _iban_lower(spaced: bool) -> Gen:
    def gen(r: random.Random) -> Planted:
        number = make_iban(r.choice(sorted(_BBAN)), r)
        return Planted((iban.format(number) if spaced else number).lower())

    return gen


def _iban_dashed(r: random.Random) -> Planted:
    return Planted(iban.format(make_iban(r.choice(sorted(_BBAN)), r)).replace(" ", "-"))


def _ssn_digits(r: random.Random) -> str:
    area = r.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}{r.randint(1, 99):02d}{r.randint(1, 9999):04d}"


def _ssn_spaced(r: random.Random) -> Planted:
    d = _ssn_digits(r)
    return Planted(f"{d[:3]} {d[3:5]} {d[5:]}", r.choice(["", "SSN ", "ssn: "]))


def _ssn_bare(r: random.Random) -> Planted:
    return Planted(_ssn_digits(r), r.choice(["SSN ", "ssn: ", "SSN#", "social security number "]))


def _phone_00(region: str, kind: phonenumbers.PhoneNumberType) -> Gen:
    intl = _phone_intl(region, kind, _INTL)

    def gen(r: random.Random) -> Planted:
        return Planted("00" + intl(r).value[1:])  # "+44 20 ..." dialled as "0044 20 ..."

    return gen


def _phone_in_parens(r: random.Random) -> Planted:
    a, e, n = _us_number(r)
    return Planted(r.choice([f"{a}-{e}-{n}", f"+1 {a} {e} {n}", f"{a}.{e}.{n}"]), lead="(", tail=")")


FORMATS: dict[str, dict[str, Gen]] = {
    "EMAIL": {
        "plain": _email_plain,
        "plus_tag": _email_plus,
        "subdomain": _email_subdomain,
        "upper": _email_upper,
        "angle_brackets": _email_angle,
        "mailto": _email_mailto,
        "unicode_local": _email_unicode_local,
        "idn_domain": _email_idn,
        "all_unicode": _email_all_unicode,
    },
    "PHONE": {
        "us_paren": _phone_us("({a}) {e}-{n}"),
        "us_dash": _phone_us("{a}-{e}-{n}"),
        "us_dot": _phone_us("{a}.{e}.{n}"),
        "us_plus1": _phone_us("+1 {a} {e} {n}"),
        "us_plus1_dash": _phone_us("+1-{a}-{e}-{n}"),
        "us_1_dash": _phone_us("1-{a}-{e}-{n}"),
        "us_plus1_paren": _phone_us("+1 ({a}) {e}-{n}"),
        "gb_mobile": _phone_intl("GB", _MOBILE, _INTL),
        "gb_fixed": _phone_intl("GB", _FIXED, _INTL),
        "gb_fixed_trunk": _gb_trunk,
        "de_fixed": _phone_intl("DE", _FIXED, _INTL),
        "de_mobile_e164": _phone_intl("DE", _MOBILE, _E164),
        "fr_mobile": _phone_intl("FR", _MOBILE, _INTL),
        "in_mobile": _phone_intl("IN", _MOBILE, _INTL),
        "br_mobile": _phone_intl("BR", _MOBILE, _INTL),
        "au_fixed": _phone_intl("AU", _FIXED, _INTL),
        "jp_fixed": _phone_intl("JP", _FIXED, _INTL),
        "es_mobile_e164": _phone_intl("ES", _MOBILE, _E164),
        "nl_mobile": _phone_intl("NL", _MOBILE, _INTL),
        "gb_mobile_00": _phone_00("GB", _MOBILE),
        "de_fixed_00": _phone_00("DE", _FIXED),
        "fr_mobile_00": _phone_00("FR", _MOBILE),
        "in_mobile_00": _phone_00("IN", _MOBILE),
        "us_in_parens": _phone_in_parens,
    },
    "CARD": {
        "visa_spaced": _card(_visa, 16, (4, 4, 4, 4), " "),
        "visa_dashed": _card(_visa, 16, (4, 4, 4, 4), "-"),
        "visa_plain": _card(_visa, 16, (), ""),
        "mastercard_spaced": _card(_mastercard, 16, (4, 4, 4, 4), " "),
        "mastercard_plain": _card(_mastercard, 16, (), ""),
        "mastercard2_dashed": _card(_mastercard2, 16, (4, 4, 4, 4), "-"),
        "amex_spaced": _card(_amex, 15, (4, 6, 5), " "),
        "amex_dashed": _card(_amex, 15, (4, 6, 5), "-"),
        "amex_plain": _card(_amex, 15, (), ""),
        "discover_spaced": _card(_discover, 16, (4, 4, 4, 4), " "),
        "csv_comma": _card_csv,
        "glued_label": _card_glued,
        "dotted": _card_sep(lambda r: "."),
        "double_space": _card_sep(lambda r: "  "),
        "no_break_space": _card_sep(lambda r: r.choice(_NBSP)),
    },
    "IBAN": {
        "spaced": _iban(True),
        "compact": _iban(False),
        "lower_spaced": _iban_lower(True),
        "lower_compact": _iban_lower(False),
        "dashed": _iban_dashed,
    },
    "NATIONAL_ID": {
        "us_ssn": _ssn,
        "us_ssn_spaced": _ssn_spaced,
        "us_ssn_bare": _ssn_bare,
        "gb_nino_spaced": _nino(True),
        "gb_nino_compact": _nino(False),
        "de_idnr": _idnr,
        "fr_nir_spaced": _nir(True),
        "fr_nir_bare": _nir(False),
        "es_dni": _dni,
        "es_nie": _nie,
        "nl_bsn": _bsn,
        "it_codice_fiscale": _codice_fiscale,
    },
    "IP": {
        "ipv4_private": _ipv4_private,
        "ipv4_public": _ipv4_public,
        "ipv4_port": _ipv4_port,
        "ipv6_full": _ipv6_full,
        "ipv6_bracketed": _ipv6_bracketed,
        "ipv6_compressed": _ipv6_compressed,
        "ipv6_link_local": _ipv6_link_local,
        "ipv6_mapped": _ipv6_mapped,
    },
    "URL_CREDENTIALS": {
        "postgres": _url("postgres://{user}:{pw}@db{n}.internal:5432/orders"),
        "postgresql_query": _url("postgresql://{user}:{pw}@db{n}.example.com/app?sslmode=require"),
        "mysql": _url("mysql://{user}:{pw}@10.0.{n}.12:3306/app"),
        "amqp": _url("amqp://{user}:{pw}@rabbit.example.com:5672/vhost"),
        "redis_no_user": _url("redis://:{pw}@cache{n}.local:6379/0"),
        "https": _url("https://{user}:{pw}@git.example.com/team/repo.git"),
        "ftp": _url("ftp://{user}:{pw}@ftp.example.org/pub/"),
    },
}


SIDE_DOOR_FORMATS: dict[str, tuple[str, ...]] = {
    "CARD": ("csv_comma", "glued_label", "dotted", "double_space", "no_break_space"),
    "EMAIL": ("unicode_local", "idn_domain", "all_unicode"),
    "IBAN": ("lower_spaced", "lower_compact", "dashed"),
    "NATIONAL_ID": ("us_ssn_spaced", "us_ssn_bare"),
    "PHONE": ("gb_mobile_00", "de_fixed_00", "fr_mobile_00", "in_mobile_00", "us_in_parens"),
}


# --- near-misses (must not be found) -------------------------------------------------------------


def _luhn_invalid(r: random.Random) -> str:
    number = _luhn_complete("4" + _digits(r, 3), 16, r)
    bad = number[:-1] + str((int(number[-1]) + r.randint(1, 9)) % 10)
    return _groups(bad, (4, 4, 4, 4), r.choice([" ", "-"])) if r.random() < 0.5 else bad


def _no_iin_16(r: random.Random) -> str:
    return _luhn_complete(r.choice("19"), 16, r)  # Luhn-valid, but no card network starts with 1 or 9


def _bad_iban(r: random.Random) -> str:
    number = make_iban(r.choice(sorted(_BBAN)), r)
    wrong = f"{(int(number[2:4]) + r.randint(1, 90)) % 97 + 2:02d}"
    if wrong == number[2:4]:
        wrong = "01"
    bad = number[:2] + wrong + number[4:]
    return iban.format(bad) if r.random() < 0.5 else bad


def _bad_bsn(r: random.Random) -> str:
    while True:
        number = _digits(r, 9)
        if sum((9 - i) * int(d) for i, d in enumerate(number[:8])) % 11 != int(number[8]):
            return "BSN " + number


def _bad_dni(r: random.Random) -> str:
    body = _digits(r, 8)
    good = dni.calc_check_digit(body)
    return body + r.choice([c for c in "TRWAGMYFPDXBNJZSQVHLCKE" if c != good])


def _bad_idnr(r: random.Random) -> str:
    number = make_idnr(r)
    return "Steuer-ID " + number[:-1] + str((int(number[-1]) + 1) % 10)


def _order_id(r: random.Random) -> str:
    return r.choice([f"ORD-{_digits(r, 4)}-{_digits(r, 6)}", f"#{_digits(r, 9)}", f"INV-{_digits(r, 5)}"])


def _version_5_parts(r: random.Random) -> str:
    return ".".join(str(r.randint(0, 20)) for _ in range(5))


def _version_v_prefix(r: random.Random) -> str:
    return f"v{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}.{r.randint(1, 99)}"


def _version_word(r: random.Random) -> str:
    return f"{r.choice(['version', 'build', 'release'])} {r.randint(1, 20)}.{r.randint(0, 9)}.0.{r.randint(1, 99)}"


def _date_dmy(r: random.Random) -> str:
    return f"{r.randint(1, 28):02d}{r.choice('/.')}{r.randint(1, 12):02d}/{r.randint(1990, 2030)}"


def _timestamp(r: random.Random) -> str:
    return f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"


def _amount(r: random.Random) -> str:
    if r.random() < 0.5:
        return f"${r.randint(1, 99)},{_digits(r, 3)}.{_digits(r, 2)}"
    return f"EUR {r.randint(1, 99)}.{_digits(r, 3)},{_digits(r, 2)}"


def _email_no_tld(r: random.Random) -> str:
    who = r.choice(_FIRST)
    return r.choice([f"{who}@localhost", f"{who}.{r.choice(_LAST)}@intranet", f"admin@server{r.randint(1, 9)}"])


def _ssn_never_issued(r: random.Random) -> str:
    return f"{r.choice(['000', '666', str(r.randint(900, 999))])}-{r.randint(10, 99)}-{r.randint(1000, 9999)}"


def _bad_ip_octet(r: random.Random) -> str:
    return f"{r.randint(256, 999)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(0, 255)}"


def _uuid(r: random.Random) -> str:
    h = f"{r.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _short_number(r: random.Random) -> str:
    return r.choice([f"ext. {_digits(r, 4)}", f"room {r.randint(100, 999)}", f"{_digits(r, 3)}-{_digits(r, 4)}"])


def _nino_bad_prefix(r: random.Random) -> str:
    return f"{r.choice(['QQ', 'GB', 'BG', 'DA'])}{_digits(r, 6)}{r.choice('ABCD')}"


def _luhn_invalid_16(r: random.Random) -> str:
    number = _card_number(r)
    return number[:-1] + str((int(number[-1]) + r.randint(1, 9)) % 10)


def _bad_card_shapes(r: random.Random) -> str:
    """The side-door card shapes, Luhn digit wrong."""
    number = _luhn_invalid_16(r)
    return r.choice([
        f"{r.choice(_FIRST)},{number},{r.randint(1, 12):02d}/{r.randint(25, 31)}",
        f"CC-{number}",
        _groups(number, (4, 4, 4, 4), "."),
        _groups(number, (4, 4, 4, 4), "  "),
        _groups(number, (4, 4, 4, 4), r.choice(_NBSP)),
    ])


def _version_5_two_digit(r: random.Random) -> str:
    """A five-part version of two-digit parts ("30.22.26.39.36"): ten digits, a valid US number's length."""
    return ".".join(str(r.randint(10, 99)) for _ in range(5))


def _case_number(r: random.Random) -> str:
    year, n, m = r.randint(2000, 2030), _digits(r, 4), _digits(r, 2)
    return r.choice([f"case {year}/{n}/{m}", f"Az. {year}/{n}/{m}", f"{year}/{n}/{m}", f"case {year}-{n}-{m}",
                     f"claim no. {_digits(r, 3)}-{_digits(r, 3)}-{_digits(r, 4)}"])


def _order_number(r: random.Random) -> str:
    """Order, invoice and tracking numbers; the card-length ones start with 1 or 9 (no card network does)."""
    return r.choice([f"order {_digits(r, 4)} {_digits(r, 4)} {_digits(r, 4)}", f"PO-{_digits(r, 10)}",
                     f"ORD{_digits(r, 12)}", f"invoice #{_digits(r, 3)}-{_digits(r, 3)}-{_digits(r, 4)}",
                     f"tracking {r.choice('19')}{_digits(r, 3)} {_digits(r, 4)} {_digits(r, 4)} {_digits(r, 4)} "
                     f"{_digits(r, 2)}"])


def _bad_iban_shapes(r: random.Random) -> str:
    bad = _bad_iban(r).replace(" ", "")
    return r.choice([iban.format(bad).lower(), bad.lower(), iban.format(bad).replace(" ", "-")])


def _ssn_spaced_never_issued(r: random.Random) -> str:
    return f"{r.choice(['000', '666', str(r.randint(900, 999))])} {r.randint(10, 99)} {r.randint(1000, 9999)}"


def _nine_digits_without_context(r: random.Random) -> str:
    return f"{r.choice(['ref', 'batch', 'qty', 'id'])} {_digits(r, 9)}"


def _bad_00_prefix(r: random.Random) -> str:
    """00 then a country code no country has ("0099 ...", "0028 ...")."""
    return f"00{r.choice(['99', '28', '80', '83', '89'])} {_digits(r, 3)} {_digits(r, 4)}"


def _email_unicode_no_tld(r: random.Random) -> str:
    return r.choice([f"{r.choice(_UNICODE_FIRST)}@localhost", f"{r.choice(_UNICODE_FIRST)}@intranet",
                     "用户@例子", f"{r.choice(_UNICODE_FIRST)}@@bücher.de"])


SIDE_DOOR_NEAR_MISSES: dict[str, Callable[[random.Random], str]] = {
    "bad_card_shapes": _bad_card_shapes,
    "version_5_two_digit": _version_5_two_digit,
    "case_number": _case_number,
    "order_number": _order_number,
    "bad_iban_shapes": _bad_iban_shapes,
    "ssn_spaced_never_issued": _ssn_spaced_never_issued,
    "nine_digits_without_context": _nine_digits_without_context,
    "bad_00_prefix": _bad_00_prefix,
    "email_unicode_no_tld": _email_unicode_no_tld,
}

NEAR_MISSES: dict[str, Callable[[random.Random], str]] = {
    "luhn_invalid_card": _luhn_invalid,
    "luhn_valid_no_iin": _no_iin_16,
    "order_id": _order_id,
    "version_5_parts": _version_5_parts,
    "version_v_prefix": _version_v_prefix,
    "version_word": _version_word,
    "date_iso": lambda r: f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "date_dmy": _date_dmy,
    "timestamp": _timestamp,
    "amount": _amount,
    "isbn": lambda r: r.choice(["978-3-16-148410-0", "ISBN 9780306406157", "978-0-262-03384-8"]),
    "bad_iban_checksum": _bad_iban,
    "email_no_tld": _email_no_tld,
    "email_double_at": lambda r: f"{r.choice(_FIRST)}@@example.com",
    "ssn_never_issued": _ssn_never_issued,
    "ssn_zero_group": lambda r: f"{r.randint(100, 599)}-00-{r.randint(1000, 9999)}",
    "bad_ip_octet": _bad_ip_octet,
    "mac_address": lambda r: ":".join(f"{r.randint(0, 255):02X}" for _ in range(6)),
    "uuid": _uuid,
    "url_without_password": lambda r: r.choice(
        ["https://example.com/login?next=/account", "http://localhost:8080/health", "s3://bucket/key/part-0001"]
    ),
    "short_number": _short_number,
    "bad_bsn": _bad_bsn,
    "bad_dni_letter": _bad_dni,
    "bad_idnr": _bad_idnr,
    "nino_bad_prefix": _nino_bad_prefix,
    **SIDE_DOOR_NEAR_MISSES,
}


# --- texts ---------------------------------------------------------------------------------------

_LABELS = {
    "EMAIL": ["email", "contact", "reply-to", "address"],
    "PHONE": ["phone", "callback number", "mobile", "tel"],
    "CARD": ["card", "pan", "payment card", "card number"],
    "IBAN": ["iban", "account", "refund account", "bank account"],
    "NATIONAL_ID": ["id", "national id", "tax id", "identity number"],
    "IP": ["client ip", "remote_addr", "source", "peer"],
    "URL_CREDENTIALS": ["dsn", "connection string", "url", "endpoint"],
}
_TOPICS = ["a refund", "a failed payment", "a locked account", "a late delivery", "an address change", "a fee"]
_FILLER = [
    "The customer was polite and asked for an update by Friday.",
    "Escalated to tier 2 after the second call.",
    "No further action needed from our side.",
    "Ticket merged with the earlier one.",
    "She mentioned the app crashed twice this week.",
    "Waiting on the warehouse to confirm.",
    "Agent noted the issue is reproducible on Android.",
    "Please keep this thread for the audit.",
]
_CHAT = ["hey", "ok so", "hi team,", "quick one:", "fyi", "lol", "thanks!", "sure, "]
_SVC = ["checkout", "billing", "auth", "search", "ledger", "notifier"]


def _support_note(r: random.Random, items: list[tuple[str, str, Planted | str]]) -> list[tuple[str, str | None]]:
    parts: list[tuple[str, str | None]] = [(f"Customer contacted us about {r.choice(_TOPICS)}. ", None)]
    for entity, label, planted in items:
        if isinstance(planted, str):
            parts += [(f"Reference {planted} was checked. ", None)]
        else:
            after = f"{planted.tail} as their {label}. "
            parts += [(f"They gave {planted.lead}", None), (planted.value, entity), (after, None)]
        if r.random() < 0.5:
            parts.append((r.choice(_FILLER) + " ", None))
    return parts


def _log_line(r: random.Random, items: list[tuple[str, str, Planted | str]]) -> list[tuple[str, str | None]]:
    ts = f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{_timestamp(r)}Z"
    parts: list[tuple[str, str | None]] = [
        (f"{ts} {r.choice(['INFO', 'WARN', 'ERROR'])} svc={r.choice(_SVC)} req={r.getrandbits(48):012x}", None)
    ]
    for entity, label, planted in items:
        key = label.replace(" ", "_")
        if isinstance(planted, str):
            parts.append((f" ref=\"{planted}\"", None))
        else:
            parts += [(f" {key}=\"{planted.lead}", None), (planted.value, entity), (f"{planted.tail}\"", None)]
    parts.append((f" took={r.randint(1, 900)}ms", None))
    return parts


def _chat(r: random.Random, items: list[tuple[str, str, Planted | str]]) -> list[tuple[str, str | None]]:
    parts: list[tuple[str, str | None]] = [(r.choice(_CHAT) + " ", None)]
    for entity, label, planted in items:
        if isinstance(planted, str):
            parts.append((f"not sure what {planted} means? ", None))
        else:
            end = planted.tail + r.choice([" ", ", ", ". ", "! "])
            parts += [(f"my {label} is {planted.lead}", None), (planted.value, entity), (end, None)]
    return parts


_STYLES = (_support_note, _log_line, _chat)


def _sample(r: random.Random, formats: dict[str, tuple[str, ...]] | None = None,
            near_misses: dict[str, Callable[[random.Random], str]] = NEAR_MISSES,
            planted: tuple[int, ...] = (0, 1, 1, 2, 2, 3), misses: tuple[int, ...] = (0, 1, 1, 2)) -> Sample:
    shapes = formats or {entity: tuple(sorted(f)) for entity, f in FORMATS.items()}
    items: list[tuple[str, str, Planted | str]] = []
    for _ in range(r.choice(planted)):
        entity = r.choice(sorted(shapes))
        gen = FORMATS[entity][r.choice(shapes[entity])]
        items.append((entity, r.choice(_LABELS[entity]), gen(r)))
    n_misses = r.choice(misses)
    for _ in range(n_misses):
        miss = near_misses[r.choice(sorted(near_misses))](r)
        items.insert(r.randint(0, len(items)), ("", "", miss))
    text, spans = "", []
    for piece, entity in r.choice(_STYLES)(r, items):
        if entity:
            spans.append(Span(entity, len(text), len(text) + len(piece)))
        text += piece
    return Sample(text, tuple(spans), n_misses)


def corpus(n: int = 800, seed: int = SEED) -> list[Sample]:
    """`n` labelled texts, the same for the same seed."""
    r = random.Random(seed)
    return [_sample(r) for _ in range(n)]


def side_door_corpus(mentions: int = 2000, near_misses: int = 2000, seed: int = SEED) -> list[Sample]:
    """Texts planted only with the side-door shapes and their look-alikes, until both counts are reached."""
    r = random.Random(seed + 1)
    out: list[Sample] = []
    found = missed = 0
    while found < mentions or missed < near_misses:
        sample = _sample(r, SIDE_DOOR_FORMATS, SIDE_DOOR_NEAR_MISSES, (0, 1, 2, 2), (0, 1, 2, 2))
        out.append(sample)
        found += len(sample.spans)
        missed += sample.near_misses
    return out


# --- scoring -------------------------------------------------------------------------------------


def score(samples: Iterable[Sample], predict: Callable[[str], Iterable[tuple[str, int, int]]]) -> dict[str, dict]:
    """Per entity type: tp, fn, fp, recall and precision of `predict` (entity, start, end triples) on `samples`."""
    counts: dict[str, dict[str, int]] = {}

    def bump(entity: str, key: str) -> None:
        counts.setdefault(entity, {"tp": 0, "fn": 0, "fp": 0})[key] += 1

    for sample in samples:
        gold = list(sample.spans)
        paired = [False] * len(gold)
        for entity, start, end in sorted(predict(sample.text), key=lambda p: p[1]):
            for i, g in enumerate(gold):
                overlap = min(end, g.end) - max(start, g.start)
                if not paired[i] and g.entity == entity and 2 * overlap >= g.end - g.start:
                    paired[i] = True
                    bump(entity, "tp")
                    break
            else:
                bump(entity, "fp")
        for g, ok in zip(gold, paired, strict=True):
            if not ok:
                bump(g.entity, "fn")
    out = {}
    for entity, c in sorted(counts.items()):
        found, planted = c["tp"] + c["fp"], c["tp"] + c["fn"]
        out[entity] = {
            **c,
            "recall": c["tp"] / planted if planted else 1.0,
            "precision": c["tp"] / found if found else 1.0,
        }
    return out
