"""bench/common.replace_section: a benchmark's --write-results replaces what it generated in its RESULTS.md
section and keeps the rest of the file, handwritten subsections of that section included."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import common  # noqa: E402

BEFORE = """# Benchmark results

## Other (bench/other.py)

other text

## gRPC server (bench/server.py)

old generated table

### musique

old generated subsection

### Concurrent readers (issue 13.3): handwritten

a handwritten table

```
### not a heading: inside a code block
```

### Quiet rerun (handwritten)

rerun notes

## Next (bench/next.py)

next text
"""


def test_replace_section_keeps_handwritten_subsections(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(BEFORE)
    body = "new generated table\n\n### musique\n\nnew generated subsection"
    common.replace_section(str(path), "gRPC server (bench/server.py)", body)
    common.replace_section(str(path), "gRPC server (bench/server.py)", body)  # twice: nothing doubles
    text = path.read_text()
    assert "old generated" not in text
    assert text.count("new generated table") == 1 and text.count("### musique") == 1
    assert text.count("a handwritten table") == 1 and text.count("rerun notes") == 1
    assert "### not a heading: inside a code block" in text
    section = text[text.index("## gRPC server"):text.index("## Next")]
    order = [section.index(s) for s in ("new generated table", "new generated subsection",
                                        "### Concurrent readers", "a handwritten table", "### Quiet rerun")]
    assert order == sorted(order)
    assert "## Other (bench/other.py)\n\nother text" in text and text.endswith("## Next (bench/next.py)\n\nnext text\n")


def test_replace_section_appends_a_new_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## gRPC server (bench/server.py) and more\n\nother\n")
    common.replace_section(str(path), "gRPC server (bench/server.py)", "body")
    text = path.read_text()
    assert "## gRPC server (bench/server.py) and more\n\nother" in text
    assert text.endswith("## gRPC server (bench/server.py)\n\nbody\n")
