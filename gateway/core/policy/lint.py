"""`gateway policy lint` and start-up: every problem of a schema file or a directory of them (each file's own,
and those across files: topics claimed twice, one token domain with two normalizers or two uses, one budget
with two sets of caps), and the one way plans are loaded: lint, then compile."""

from __future__ import annotations

from pathlib import Path

from gateway.core.codec.formats import iter_schema_files, load_schema_file
from gateway.core.policy.compiler import compile_plan, compile_schema
from gateway.core.policy.key_headers import WHERE_HEADERS, duplicate_header_names
from gateway.core.policy.plan import Plan, Problem
from gateway.errors import PolicyError


def lint_file(path: Path) -> list[Problem]:
    try:
        schema = load_schema_file(path)
    except PolicyError as exc:
        return [Problem("error", str(path), "(file)", str(exc).split(": ", 1)[-1])]
    problems = compile_schema(schema)[1]
    for name in duplicate_header_names(path.read_bytes()):
        problems.append(Problem("error", str(path), f"{WHERE_HEADERS}.{name}", f"header '{name}' is named twice "
                                "(a JSON parser keeps the last silently): name it once"))
    return problems


def lint_directory(directory: Path) -> list[Problem]:
    problems: list[Problem] = []
    paths = list(iter_schema_files(directory))
    if not paths:
        return [Problem("error", str(directory), "(directory)", "no *.avsc schema files found")]
    topics: dict[str, str] = {}
    normalizers: dict[str, tuple[str | None, str]] = {}  # domain -> (normalizer spec, first schema)
    key_uses: dict[str, tuple[str, str]] = {}  # domain -> (what its key makes, first schema)
    budgets: dict[str, tuple[tuple[int, float, float], str]] = {}  # budget -> ((period, caps), first schema)
    for path in paths:
        problems += lint_file(path)
        try:
            schema = load_schema_file(path)
            settings = schema.privacy if isinstance(schema.privacy, dict) else {}
            source = settings.get("source_topic", schema.fullname)
        except PolicyError:
            continue
        plan = compile_schema(schema)[0]
        for spec in {a.budget: a for a in (plan.aggregates if plan else ())}.values():  # one per budget
            caps = (spec.period_ms, spec.budget_epsilon_cap, spec.budget_delta_cap)
            first_caps = budgets.setdefault(spec.budget, (caps, str(path)))
            if first_caps[0] != caps:
                problems.append(Problem("error", str(path), "(record)", f"budget '{spec.budget}' (the subjects "
                                        f"these aggregates are about) has other caps or period in {first_caps[1]}: "
                                        "sources whose subjects share a token domain share one budget; declare "
                                        "the same \"budget\" in each"))
        for domain, use in (plan.key_uses if plan else {}).items():
            first_use = key_uses.setdefault(domain, (use, str(path)))
            if first_use[0] != use:
                problems.append(Problem("error", str(path), "(record)", f"domain '{domain}' is used for {use} "
                                        f"here and for {first_use[0]} in {first_use[1]}: give each its own domain"))
        for domain, spec in (plan.token_normalizers if plan else {}).items():
            first = normalizers.setdefault(domain, (spec, str(path)))
            if first[0] != spec:
                problems.append(Problem("error", str(path), "(record)", f"token domain '{domain}' is tokenized "
                                        f"with normalizer {spec or 'none'} here and {first[0] or 'none'} in "
                                        f"{first[1]}: one identifier would get several tokens"))
        if source in topics:
            problems.append(Problem("error", str(path), "(record)",
                                    f"source_topic '{source}' is also claimed by {topics[source]}"))
        topics[source] = str(path)
    return problems


def load_plans(directory: Path) -> list[Plan]:
    """Compile every schema in `directory`; fail naming every problem if any is invalid."""
    errors = [p for p in lint_directory(directory) if p.severity == "error"]
    if errors:
        raise PolicyError(f"invalid privacy policies in {directory}:\n  " + "\n  ".join(map(str, errors)))
    return [compile_plan(load_schema_file(p)) for p in iter_schema_files(directory)]
