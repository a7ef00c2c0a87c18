"""The documentation site builds in strict mode, and the README and docs pages link only to files that exist."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")


def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr


def _local_links(markdown_file):
    text = CODE.sub("", FENCE.sub("", markdown_file.read_text()))
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue                                    # http:, mailto:, ... and anchors within the page
        yield target.split("#", 1)[0]


def test_readme_is_short_and_local_links_exist():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 160
    pages = [readme, *sorted((ROOT / "docs").rglob("*.md"))]
    missing = [f"{page.relative_to(ROOT)}: {target}" for page in pages for target in _local_links(page)
               if not (page.parent / target).exists()]
    assert not missing, missing
    assert any(True for _ in _local_links(readme))      # the README links to the docs pages
