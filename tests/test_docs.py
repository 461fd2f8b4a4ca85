"""The user-facing docs speak of hardware and dates, not of how the project was run, and
cite only files that are in the repo."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "data" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
PROCESS_TALK = re.compile(r"\bsessions?\b|\bleases?\b|\bissue\s*#?\d|\bissue's\b|\blent\b|/work/", re.IGNORECASE)
# A cited path without wildcards or alternatives: benchmarks/results/x.json, docs/design.md, ...
CITED = re.compile(r"(?:benchmarks/|docs/|scripts/|vllm_spd/|tests/)[\w./-]*\w")


def test_no_process_talk():
    found = [f"{doc.relative_to(ROOT)}:{i}: {line.strip()}"
             for doc in DOCS for i, line in enumerate(doc.read_text().splitlines(), 1)
             if PROCESS_TALK.search(line)]
    assert not found, "\n".join(found)


def test_cited_files_exist():
    missing = []
    for doc in DOCS:
        for i, line in enumerate(doc.read_text().splitlines(), 1):
            for m in CITED.finditer(line):
                end = line[m.end():m.end() + 1]
                if end in ("{", "*", "<", "$") or "<" in m.group() or line[m.start() - 1:m.start()] in ("/", "$"):
                    continue   # a pattern or a placeholder, not one file
                if line[:m.start()].rstrip().endswith("--out"):
                    continue   # a command's output
                path = m.group()
                if not ((ROOT / path).exists() or (doc.parent / path).exists()):
                    missing.append(f"{doc.relative_to(ROOT)}:{i}: {path}")
    assert not missing, "\n".join(missing)


def test_readme_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "## Decode speed on one GPU" in readme


def test_readme_configuration_table_has_every_key():
    source = (ROOT / "vllm_spd" / "config.py").read_text()
    keys = set(re.findall(r'"(\w+)"', re.search(r"SPD_KEYS = frozenset\((.*?)\n\)", source, re.S).group(1)))
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Decode speed on one GPU")]
    rows = {k for k in re.findall(r"^\| `(\w+)`(?:, `(\w+)`)?", table, re.M) for k in k if k}
    assert keys - {"method"} == rows
