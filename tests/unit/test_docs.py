"""The docs site builds with `mkdocs build --strict` (no broken link or anchor, no page left out of the
nav), and the README stays a short entry point whose every link lands on a page that exists."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import orjson
from markdown.extensions.toc import slugify

from gateway.core.policy.lint import lint_directory, load_plans
from gateway.core.sanitizer import RecordSanitizer
from gateway.keys.envelope import DekCache
from gateway.keys.tokens import DomainTokenizer

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MKDOCS = [sys.executable, "-m", "mkdocs"]


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([*MKDOCS, "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
                          cwd=config.parent, env=env, capture_output=True, text=True, timeout=300)


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "settings" / "index.html").is_file()
    assert "WARNING" not in result.stderr, result.stderr[-4000:]


def test_a_broken_anchor_fails_the_build(tmp_path: Path) -> None:
    """The strictness is real: a link to an anchor a page does not have stops the build."""
    copy = tmp_path / "repo"
    (copy / "docs").mkdir(parents=True)
    (copy / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    for page in (ROOT / "docs").rglob("*.md"):
        target = copy / "docs" / page.relative_to(ROOT / "docs")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page.read_text())
    (copy / "docs" / "index.md").write_text((copy / "docs" / "index.md").read_text()
                                            + "\nSee [the DP page](dp.md#no-such-section).\n")
    result = _build(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-section" in result.stderr


def test_the_readme_is_short_and_links_only_to_existing_pages() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 250
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links, "the README links into docs/"
    for link in links:
        assert not link.startswith(("http://", "https://")), link
        assert (ROOT / link).is_file(), f"the README links to {link}, which does not exist"
    docs = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")}
    assert docs <= set(links), f"pages the README's table does not link to: {sorted(docs - set(links))}"


def test_the_readme_anchors_exist() -> None:
    """The README is outside the site, so mkdocs does not check its anchors: each must be a heading's
    slug on the page it names (the slugs mkdocs gives headings: markdown's toc slugify)."""
    anchored = re.findall(r"\]\(([^)#]+)#([^)]+)\)", README.read_text())
    assert anchored
    for page, anchor in anchored:
        headings = re.findall(r"^#+ (.+)$", (ROOT / page).read_text(), re.M)
        assert anchor in {slugify(h, "-") for h in headings}, f"{page} has no heading #{anchor}"


def test_the_readme_example_is_what_the_gateway_publishes(tmp_path: Path) -> None:
    """The README's one annotated record, its raw event and its sanitized output, run through the
    sanitizer: every field as shown (the token's value depends on the domain key, its form does not)."""
    schema, raw, shown = (orjson.loads(block) for block in re.findall(r"```json\n(.*?)```", README.read_text(),
                                                                       re.S)[:3])
    (tmp_path / "signup.avsc").write_bytes(orjson.dumps(schema))
    assert [p.severity for p in lint_directory(tmp_path)] == ["warning"]  # the unannotated user_agent
    (plan,) = load_plans(tmp_path)
    tokenizer = DomainTokenizer("customer", "1", secrets.token_bytes(32))
    sanitizer = RecordSanitizer(plan, {"customer": tokenizer}, DekCache(None, 3600, 1000), max_field_bytes=1000)
    out = sanitizer.sanitize(raw).record
    assert re.fullmatch(r"tok_v1_[A-Za-z0-9_-]{43}", shown["email"])
    assert out == {**shown, "email": out["email"]}
    assert out["email"] == sanitizer.sanitize({**raw, "email": "alice@example.org"}).record["email"]
