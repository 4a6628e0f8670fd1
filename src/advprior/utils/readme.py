"""Generated blocks in Markdown files: text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
is owned by a script and replaced whole, so README numbers are never typed by hand."""
from __future__ import annotations

import re
from pathlib import Path

from .io import atomic_write


def _pattern(name: str) -> re.Pattern:
    n = re.escape(name)
    return re.compile(rf"(<!-- generated:{n} -->\n)(.*?)(<!-- /generated:{n} -->)", re.S)


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with block ``name``'s body replaced by ``content``; ValueError if the markers are missing."""
    pat = _pattern(name)
    if not pat.search(text):
        raise ValueError(f"no generated block {name!r}: add '<!-- generated:{name} -->' and "
                         f"'<!-- /generated:{name} -->' lines where it belongs")
    body = content if content.endswith("\n") else content + "\n"
    return pat.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)


def read_block(text: str, name: str) -> str:
    m = _pattern(name).search(text)
    if not m:
        raise ValueError(f"no generated block {name!r}")
    return m.group(2)


def update_file(path: str | Path, blocks: dict[str, str]) -> bool:
    """Replace each named block in ``path``; returns True when the file changed."""
    path = Path(path)
    old = path.read_text()
    new = old
    for name, content in blocks.items():
        new = replace_block(new, name, content)
    if new != old:
        atomic_write(path, lambda p: p.write_text(new))
    return new != old
