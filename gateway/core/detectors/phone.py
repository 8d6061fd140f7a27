"""PHONE: telephone numbers, validated against libphonenumber's numbering plans (Leniency.VALID)."""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections.abc import Iterator, Sequence

import phonenumbers

from gateway.core.detectors.base import Match
from gateway.core.detectors.iban import inside_iban_shape

# PhoneNumberMatcher is exact but slow (50-200 µs a call: a large regex, then pure-Python parsing of
# each sub-span it tries), so it only sees short slices that can hold a number: an optional '+' or
# '(' then digits and the usual separators, at least 7 digits in all. A longer run of digit groups
# is cut into windows of whole groups (at most _WINDOW characters) that overlap so that every number
# up to _LONGEST characters lies whole in one of them; the next window starts after the last number
# found (or with a number the cut may have split). A window goes to the matcher only when its groups
# can add up to a phone number (PhoneFinder.plausible). Tokens no phone can be part of (versions,
# dates, dotted quads) split a run. One character of context on each side lets the matcher apply its
# own rules about what may touch a number.
_RUN = re.compile(r"[+(]?\d(?:[\d \u00a0().\-/]*\d)?")
_TOKEN = re.compile(r"[^ \u00a0]+")
_WINDOW = 32
_TOKEN_REACH = 64
_LONGEST = 19  # "+44 (0)20 7946 0958"
_TRIES = 4  # spans of a window retried apart from the others (PhoneFinder._between)
_TRIES_AMONG_GROUPS = 2  # the same inside a longer run of digit groups, where every window is tried
_DIGITS = re.compile(r"\d+")
_MIN_DIGITS = 7
_MAX_DIGITS = 17  # E.164 allows 15; a trunk "(0)" and a carrier code can add two
_VALID = phonenumbers.Leniency.VALID
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_OTHER_LABEL = re.compile(
    r"(?<!\w)(?:id|idnr|steuer-?id|tax id|tin|bsn|ssn|nir|iban|account|acct|order|invoice|ref|ticket|case|claim"
    r"|docket|tracking|serial)\.?\s*(?:n[or]\.?\s*)?[:#=]?\s*$",
    re.IGNORECASE,
)
_COUNTRY_CODES = frozenset(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
_DOTTED = frozenset("0123456789.")
_NUMBER_TYPES = ("general_desc", "fixed_line", "mobile", "toll_free", "premium_rate", "shared_cost",
                 "personal_number", "voip", "pager", "uan", "voicemail")


def _national_totals(metadata: phonenumbers.PhoneMetadata) -> tuple[frozenset[int], str, frozenset[int]]:
    """How many digits a number written in this region's national format can have: (without the
    national prefix, the prefix, with it).

    The national number's possible lengths, and those plus the national prefix when that prefix is a
    plain digit string ("1", "0"; the digits must then start with it); where it is a pattern (carrier
    codes, area codes put in front), anything up to 8 more digits, whatever they start with.
    """
    lengths = {n for kind in _NUMBER_TYPES for n in (getattr(metadata, kind) and
                                                     getattr(metadata, kind).possible_length or ())}
    if not lengths:
        return frozenset(range(_MIN_DIGITS, _MAX_DIGITS + 9)), "", frozenset()
    prefix = metadata.national_prefix_for_parsing or metadata.national_prefix or ""
    if prefix.isdigit():
        return frozenset(lengths), prefix, frozenset(n + len(prefix) for n in lengths)
    return frozenset(n + k for n in lengths for k in range(0, 9)), "", frozenset()


def _max_groups(metadata: phonenumbers.PhoneMetadata) -> int:
    """The most digit groups a national number of this region is written in: its formats' groups, plus
    the national prefix written apart ("1 (212) 555-0100")."""
    formats = list(metadata.number_format or ()) + list(metadata.intl_number_format or ())
    return max((f.format.count("\\") for f in formats), default=_MAX_DIGITS) + 1


_FORMAT_GROUP = re.compile(r"\(\\d(?:\{(\d+)(?:,(\d+))?\})?\)")
_FORMAT = re.compile(r"(?:\(\\d(?:\{\d+(?:,\d+)?\})?\))+")


def _groupings(metadata: phonenumbers.PhoneMetadata, prefix: str,
               lengths: frozenset[int]) -> frozenset[tuple[int, ...]] | None:
    """The digit-group sizes a national number of this region is written in: each format of its metadata
    ("(\\d{3})(\\d{3})(\\d{4})"), the national prefix joined to the first group ("01 42 68 53 00") or
    apart ("1 212 555 0100"), or no groups at all ("2125550100"). None when a format is not a plain run
    of digit groups: then any grouping may be one."""
    out: set[tuple[int, ...]] = {(n,) for n in lengths}
    for fmt in list(metadata.number_format or ()) + list(metadata.intl_number_format or ()):
        if not _FORMAT.fullmatch(fmt.pattern):
            return None
        ranges = [range(int(a or 1), int(b or a or 1) + 1) for a, b in _FORMAT_GROUP.findall(fmt.pattern)]
        for sizes in itertools.product(*ranges):
            if sum(sizes) not in lengths:
                continue
            out.add(sizes)
            if prefix:
                out.add((sizes[0] + len(prefix), *sizes[1:]))
                out.add((len(prefix), *sizes))
                out.add((sum(sizes) + len(prefix),))
    return frozenset(out)


@functools.cache
def _country_lengths(code: int) -> frozenset[int]:
    """The national number lengths of the regions with this country code (a trunk zero in brackets adds
    one); empty for a code no country has. Read on first use: the metadata of every region is large."""
    lengths: set[int] = set()
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ()):
        metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if metadata is not None:
            lengths |= {n + k for kind in _NUMBER_TYPES for n in (getattr(metadata, kind) and
                                                                 getattr(metadata, kind).possible_length or ())
                        for k in (0, 1)}
    if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE and not lengths:
        return frozenset(range(4, _MAX_DIGITS + 1))
    return frozenset(lengths)


def _international_length(digits: str) -> bool:
    """`digits` (after '+' or an international prefix) are a country code and a national number of one
    of that country's lengths."""
    return any(digits[:n].isdigit() and len(digits) - n in _country_lengths(int(digits[:n]))
               for n in (1, 2, 3) if len(digits) > n)


def _international_prefixes(metadata: phonenumbers.PhoneMetadata) -> tuple[str, ...]:
    """How a number dialled abroad starts in this region: its plain IDD ("011") and the common "00";
    when the IDD is a pattern, any leading 0."""
    idd = metadata.international_prefix or ""
    return ("00", idd) if idd.isdigit() else ("0",)


def _token(text: str, start: int, end: int) -> str:
    """The number with whatever dotted or slashed digit groups touch it: "30.22.26.39.36" around "22.26.39.36".

    At most _TOKEN_REACH characters on each side, so a text of many numbers in one endless dotted run
    costs no more per number (and such a run is no phone anyway: its dots reject it).
    """
    low, high = max(0, start - _TOKEN_REACH), min(len(text), end + _TOKEN_REACH)
    while start > low + 1 and text[start - 1] in "./" and text[start - 2].isdigit():
        start -= 2
        while start > low and text[start - 1].isdigit():
            start -= 1
    while end + 1 < high and text[end] in "./" and text[end + 1].isdigit():
        end += 2
        while end < high and text[end].isdigit():
            end += 1
    return text[start:end]


def _sizes(text: str) -> list[int]:
    return [len(g) for g in _DIGITS.findall(text)]


class PhoneFinder:
    """Numbers valid in their numbering plan: national format for `region`, international ("+44 ...",
    "0044 ...", "011 44 ...") for any."""

    entity = "PHONE"

    def __init__(self, region: str = "US") -> None:
        region = region.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {region!r}: use an ISO 3166 code libphonenumber knows, e.g. 'US'")
        self.region = region
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        lengths = metadata.general_desc.possible_length
        self._min_national = max(_MIN_DIGITS, min(lengths, default=_MIN_DIGITS))
        self._national, self._prefix, self._prefixed = _national_totals(metadata)
        general = metadata.general_desc.national_number_pattern
        plain = (metadata.national_prefix_for_parsing or metadata.national_prefix or "0").isdigit()
        self._shape = re.compile(general) if general and plain else None
        self._international = frozenset(range(_MIN_DIGITS, _MAX_DIGITS + 4))  # after '+' or an IDD
        self._idd = _international_prefixes(metadata)
        self._max_groups = _max_groups(metadata)
        possible = frozenset(n for kind in _NUMBER_TYPES for n in (getattr(metadata, kind) and
                                                                   getattr(metadata, kind).possible_length or ()))
        self._groupings = _groupings(metadata, self._prefix, possible) if self._shape is not None else None

    def plausible(self, value: str, grouped: bool = False) -> bool:
        """A cheap necessary condition for the matcher to find a number in `value`.

        The matcher only returns spans of whole digit groups, so some run of consecutive groups must
        add up to a digit count a number can have: national lengths for the region, or the
        international range after a '+' or an international prefix. Long runs of digit groups
        ("4111 4111 4111 ...", a table of amounts) rarely do, and skip the matcher. With `grouped`, a
        national run of groups must also be written in one of the region's groupings.
        """
        groups = _DIGITS.findall(value)
        if not self._counts(value, groups):
            return False
        return not grouped or self._groupings is None or self._grouped(value, groups)

    def _counts(self, value: str, groups: list[str]) -> bool:
        """Some run of the groups adds up to a digit count a number can have (see plausible)."""
        plus = value[0] == "+" or value[:2] == "(+"
        for i in range(len(groups)):
            international = (i == 0 and plus) or groups[i].startswith(self._idd)
            prefixed = bool(self._prefix) and groups[i].startswith(self._prefix)
            total = 0
            for j in range(i, len(groups)):
                total += len(groups[j])
                if total > _MAX_DIGITS + 3:
                    break
                if international and total in self._international:
                    return True
                if total in self._national and self._national_shape("".join(groups[i : j + 1])):
                    return True
                if prefixed and total in self._prefixed \
                        and self._national_shape("".join(groups[i : j + 1])[len(self._prefix) :]):
                    return True
        return False

    def _grouped(self, value: str, groups: list[str]) -> bool:
        """Some run of the groups is a national number in one of the region's groupings, or starts with
        '+' or an international prefix and has a length a number can have."""
        groupings = self._groupings or frozenset()
        plus = value[0] == "+" or value[:2] == "(+"
        sizes = [len(g) for g in groups]
        for i in range(len(groups)):
            if (i == 0 and plus) or groups[i].startswith(self._idd):
                total = 0  # international: whatever the grouping, if the digits can make a number
                for size in sizes[i:]:
                    total += size
                    if total in self._international:
                        return True
                    if total > _MAX_DIGITS + 3:
                        break
            for j in range(i + 1, min(len(sizes), i + self._max_groups + 1) + 1):
                if tuple(sizes[i:j]) in groupings:
                    return True
        return False

    def _national_shape(self, digits: str) -> bool:
        """The digits fit the region's general national number pattern (every valid number does: "496 ..."
        is no US area code); where the national prefix is a pattern, any digits might."""
        return self._shape is None or self._shape.fullmatch(digits) is not None

    def find(self, text: str, covered: Sequence[Match] = ()) -> Iterator[Match]:
        """Phone matches; candidates inside a `covered` span (a card, an IBAN, an IP already found) are skipped.

        Such a phone is no longer than the span covering it and ranks below it, so it would lose the
        overlap; the skip saves the costliest work for the texts that hold the most numbers.
        """
        inside = _Cover(covered)
        for seg_start, seg_end in self._segments(text):
            if seg_end - seg_start <= _WINDOW:
                yield from self._window(text, seg_start, seg_end, inside)
                continue
            groups = [(g.start(), g.end()) for g in _DIGITS.finditer(text, seg_start, seg_end)]
            i = 0
            while i < len(groups):
                start = seg_start if i == 0 else groups[i][0] - (text[groups[i][0] - 1] in "+(")
                j = i
                while j + 1 < len(groups) and groups[j + 1][1] - start <= _WINDOW:
                    j += 1
                resume = start + _WINDOW - _LONGEST  # a number starting before this lies whole in the window
                last = j == len(groups) - 1
                for match in self._window(text, start, groups[j][1], inside, among_groups=True):
                    if not last and match.end == groups[j][1] and match.start > start \
                            and self._may_go_on(text[match.start : match.end]):
                        # it touches the cut and may go on past it ("+49 30 901820 | 12345"): a prefix of a
                        # number can be a valid number too. The next window starts with it, whole
                        resume = match.start
                        break
                    resume = max(resume, match.end)
                    yield match
                i += 1  # on to the first group past `resume` (even from the last window: it tried few spans apart)
                while i < len(groups) and groups[i][0] < resume:
                    i += 1

    def _may_go_on(self, value: str) -> bool:
        """Whether a longer number could begin with `value`: fewer digits than the longest number of its
        plan ("212-555-0100" in the US plan cannot grow, "+49 30 901820" can)."""
        digits = "".join(_DIGITS.findall(value))
        idd = next((p for p in self._idd if len(p) > 1 and digits.startswith(p)), None)
        if value.lstrip("(")[:1] == "+" or idd is not None:
            digits = digits if idd is None or value.lstrip("(")[:1] == "+" else digits[len(idd) :]
            return any(digits[:n].isdigit() and len(digits) - n < max(_country_lengths(int(digits[:n])), default=0)
                       for n in (1, 2, 3) if len(digits) > n)
        if self._prefix and digits.startswith(self._prefix) and len(digits) in self._prefixed:
            return len(digits) < max(self._prefixed)
        return len(digits) < max(self._national)

    def _segments(self, text: str) -> Iterator[tuple[int, int]]:
        """The runs of digit groups, split at the tokens no phone can be part of."""
        for run in _RUN.finditer(text):
            start, end = run.start(), run.end()
            if "/" not in run.group() and "." not in run.group():
                yield start, end
                continue
            first = last = None
            international = "+" in run.group()  # "+33 1.42.68.53.00": any grouping after a country code
            for token in _TOKEN.finditer(text, start, end):
                if self._never_token(token.group(), international):
                    if first is not None and last is not None:
                        yield first, last
                    first = last = None
                    continue
                first = token.start() if first is None else first
                last = token.end()
            if first is not None and last is not None:
                yield first, last

    def _never_token(self, token: str, international: bool) -> bool:
        """A date, case or file number (two slashes), a dotted quad, or (in a national number) more dotted
        groups than the region writes a number in: _is_part_of_something_else rejects any number that
        touches it."""
        return token.count("/") >= 2 or _DOTTED_QUAD.fullmatch(token) is not None or (
            not international and token.count(".") >= self._max_groups and set(token) <= _DOTTED)

    def _window(self, text: str, start: int, end: int, inside: _Cover,
                among_groups: bool = False) -> Iterator[Match]:
        """The numbers of one window. `among_groups`: the window is part of a longer run of digit groups,
        where a number's boundaries are a guess, so only a number written in its own grouping counts
        (and a window with no run of groups in such a grouping never reaches the matcher)."""
        if end - start < _MIN_DIGITS:
            return
        value = text[start:end]
        # without a '+' the number is in national format: at least the plan's shortest national number
        if sum(c.isdigit() for c in value) < (_MIN_DIGITS if value[0] == "+" else self._min_national):
            return
        if inside(start, end) or not self.plausible(value, among_groups) or self._never(text, start, value):
            return
        found = list(self._matches(text, start, end, among_groups))
        yield from found
        yield from self._between(text, start, end, found, inside, among_groups)

    def _between(self, text: str, start: int, end: int, found: list[Match], inside: _Cover,
                 among_groups: bool) -> Iterator[Match]:
        """Numbers among other digit groups of the window that the matcher missed.

        The matcher takes the longest run of groups it can as one candidate and, when that fails,
        retries only the part before the first space and single tokens: "qty 2 212 555 0100", "212
        555 0100 415 555 2671" and "+44 20 7946 0958 2 times" hold numbers it does not find. Here each
        stretch of two or more groups outside what it found is tried again, span by span of whole
        groups whose digits can make a number, longest first, at most _TRIES spans per window.
        """
        groups = [(g.start(), g.end()) for g in _DIGITS.finditer(text, start, end)
                  if not any(m.start < g.end() and g.start() < m.end for m in found)]
        if len(groups) < 2:
            return
        # stretch[k]: groups k and k-1 belong to one stretch when at most two separator characters part
        # them (more: a number the matcher found lies between)
        stretch = [0]
        for k in range(1, len(groups)):
            stretch.append(stretch[-1] + (groups[k][0] - groups[k - 1][1] > 2))
        tries, i, budget = 0, 0, _TRIES_AMONG_GROUPS if among_groups else _TRIES
        while i < len(groups) - 1 and tries < budget:
            resume = i + 1
            last = i + 1
            while last + 1 < len(groups) and stretch[last + 1] == stretch[i] \
                    and groups[last + 1][1] - groups[i][0] <= _LONGEST:  # no number is written longer
                last += 1
            for j in range(last, i, -1):
                if stretch[j] != stretch[i]:
                    continue
                lo = groups[i][0] - (groups[i][0] > start and text[groups[i][0] - 1] in "+(")
                if (lo, groups[j][1]) == (start, end) or inside(lo, groups[j][1]):
                    continue  # the matcher saw this very span
                span = text[lo : groups[j][1]]
                if not self.whole_plausible(span) or (among_groups and self._groupings is not None and not (
                        span[0] == "+" or span.startswith(self._idd) or tuple(_sizes(span)) in self._groupings)):
                    continue
                tries += 1
                matches = self._span(text, lo, groups[j][1])
                if matches:
                    yield from matches
                    resume = next((k for k in range(j + 1, len(groups)) if groups[k][0] >= matches[-1].end),
                                  len(groups))
                    break
                if tries >= budget:
                    return
            i = resume

    def _span(self, text: str, start: int, end: int) -> list[Match]:
        """text[start:end], whole digit groups cut out of a longer run, as one number, or nothing.

        Among other digit groups the boundaries are a guess: only a number written in its own grouping
        counts ("212 555 0100" yes, "2496 8295 36" of a tracking number no). The span is parsed and
        validated directly (libphonenumber's parse and is_valid_number, the checks of the matcher's
        VALID leniency; a Latin letter glued before it refuses it, as the matcher does), a quarter of
        a matcher call's cost.
        """
        before = text[start - 1] if start else " "
        if before.isascii() and before.isalpha():
            return []
        value = text[start:end].lstrip("(")
        if value.startswith("00") and value[2:3] not in ("", "0"):
            value = "+" + value[2:]  # the international prefix most of the world dials
        try:
            number = phonenumbers.parse(value, self.region)
        except phonenumbers.NumberParseException:
            return []
        if not phonenumbers.is_valid_number(number) or not _grouped_as_written(number, value, self.region):
            return []
        start, end = _balanced(text, start, end)
        return [] if _is_part_of_something_else(text, start, end, self.region) else [Match(self.entity, start, end)]

    def whole_plausible(self, value: str) -> bool:
        """`value`'s digits, all of them, can make a number (plausible() asks it of any run of its groups)."""
        groups = _DIGITS.findall(value)
        digits = "".join(groups)
        total = len(digits)
        if value[0] == "+" or value[:2] == "(+":
            return _international_length(digits)
        idd = next((p for p in self._idd if digits.startswith(p) and len(p) > 1), None)
        if idd is not None and _international_length(digits[len(idd) :]):
            return True
        if total in self._national and self._national_shape(digits):
            return True
        return bool(self._prefix) and digits.startswith(self._prefix) and total in self._prefixed \
            and self._national_shape(digits[len(self._prefix) :])

    def _never(self, text: str, start: int, value: str) -> bool:
        """Candidates whose every match _is_part_of_something_else would reject (or the matcher finds none
        in), told apart before the matcher's cost: an unknown country code after '+' or "00", and a single token
        (no space inside, where the matcher could start over) glued to a word, with two slashes, or with
        more dotted groups than any format of the region writes."""
        code = value[1:4] if value[0] == "+" else value[2:5] if value[:2] == "00" and value[2:3] != "0" else None
        if code is not None and not any(code[:n].isdigit() and int(code[:n]) in _COUNTRY_CODES for n in (1, 2, 3)):
            return True
        if " " in value or "\u00a0" in value:
            return False
        before = text[start - 1] if start else " "
        # a Latin letter: the matcher refuses those itself (a CJK character before a number is fine)
        if (before.isascii() and before.isalpha()) or before in "#_" \
                or (before in "-/" and start > 1 and text[start - 2].isalnum()):
            return True
        if value.count("/") >= 2:
            return True
        if _DOTTED_QUAD.fullmatch(value):
            return True
        return value[0] != "+" and value.count(".") >= self._max_groups and set(value) <= _DOTTED

    def _matches(self, text: str, cstart: int, cend: int, own_grouping: bool = False) -> Iterator[Match]:
        """The matcher's numbers in text[cstart:cend]; with `own_grouping`, only those written in one of
        the ways libphonenumber writes them (see _span)."""
        lo, hi = max(0, cstart - 1), min(len(text), cend + 1)
        window = text[lo:hi]
        # "0044 20 7946 0958": the international prefix most of the world dials. libphonenumber knows it
        # only for regions that use it, so it is written as '+' (same length: " +44 ...") for any region
        idd = cstart - lo + (text[cstart] == "(")
        rewritten = window[idd : idd + 2] == "00" and window[idd + 2 : idd + 3] not in ("", "0") \
            and (idd == 0 or not window[idd - 1].isdigit())
        if rewritten:
            window = window[:idd] + " +" + window[idd + 2 :]
        for found in phonenumbers.PhoneNumberMatcher(window, self.region, leniency=_VALID):
            if own_grouping and not _grouped_as_written(found.number, found.raw_string, self.region):
                continue
            start, end = lo + found.start, lo + found.end
            if rewritten and found.start == idd + 1:
                start -= 1  # the '+' stood for "00": the span covers both zeros
            start, end = _balanced(text, start, end)
            if not _is_part_of_something_else(text, start, end, self.region):
                yield Match(self.entity, start, end)


class _Cover:
    """Whether a span lies inside one of the given matches: bisect over starts and running maximum of ends,
    so a text with thousands of cards does not make each phone candidate scan them all."""

    def __init__(self, covered: Sequence[Match]) -> None:
        spans = sorted((c.start, c.end) for c in covered)
        self._starts = [s for s, _ in spans]
        self._max_end: list[int] = []
        high = -1
        for _, end in spans:
            high = max(high, end)
            self._max_end.append(high)

    def __call__(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._starts, start)
        return i > 0 and self._max_end[i - 1] >= end


def _balanced(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without a parenthesis it does not close: "(212-555-0100)" is matched as "(212-555-0100",
    and replacing that would eat the opening parenthesis of the text."""
    value = text[start:end]
    if value.startswith("(") and ")" not in value:
        start += 1
        while start < end and text[start] in " \u00a0":
            start += 1
    elif value.endswith(")") and "(" not in value:
        end -= 1
    return start, end


def _is_part_of_something_else(text: str, start: int, end: int, region: str) -> bool:
    """Numbers that libphonenumber accepts but the text says are not phones.

    A number glued to a word by '-', '/' or '#' or '_' is an identifier ("ORD-5615-172110"), and so is
    one right after the label of another kind of number ("Steuer-ID 15708964339", "order: ...", "case
    2026-0412-77"); a dotted quad is an address or a version, even when its octets are out of range;
    digits inside an IBAN-shaped token are account digits, even when the IBAN's checksum fails. Two
    slashes make a date, a case or file number ("2026/0412/77"); four or more dotted groups make a
    version or an OID ("30.22.26.39.36") unless they are the number's own grouping (the French
    "01.23.45.67.89").
    """
    before = text[start - 1] if start else " "  # not "": `"" in "#_"` holds
    if before in "#_" or (before in "-/" and start > 1 and text[start - 2].isalnum()):
        return True
    if _OTHER_LABEL.search(text, max(0, start - 24), start):
        return True
    if _DOTTED_QUAD.fullmatch(text, start, end):
        return True
    token = _token(text, start, end)
    if token.count("/") >= 2:
        return True
    if token.count(".") >= 3 and not _own_grouping(token, text[start:end], region):
        return True
    return inside_iban_shape(text, start, end)


def _own_grouping(token: str, value: str, region: str) -> bool:
    """The token's digit groups are those libphonenumber writes the number in: national (with or without
    the national prefix in front: "1 212 555 0100"), international, or E.164."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return False
    return _grouped_as_written(number, token, region)


def _grouped_as_written(number: phonenumbers.PhoneNumber, token: str, region: str) -> bool:
    """`token`'s digit groups are one of the ways libphonenumber writes `number` (see _own_grouping); a
    trunk zero kept in brackets after the country code ("+44 (0)20 7946 0958") is no group of its own."""
    sizes = _sizes(token.replace("(0)", "", 1))
    if len(sizes) == 1:  # no separators: E.164 or the national number written plain
        return True
    national = _sizes(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    if sizes == national:
        return True
    prefix = phonenumbers.PhoneMetadata.metadata_for_region(region).national_prefix or ""
    return sizes == [len(prefix), *national] \
        or sizes == _sizes(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL))
