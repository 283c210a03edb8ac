"""The one way benchmark scripts put their section into a Markdown file (RESULTS.md, README.md)."""

from __future__ import annotations

from pathlib import Path


def replace_block(path: Path, block: str, begin: str, end: str) -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in place of the file's previous block
    between those markers, or append it; written atomically."""
    from hrdeploy.io import write_text

    text = path.read_text() if path.is_file() else ""
    block = block.rstrip("\n") + "\n"
    if begin in text and end in text:
        rest = text[text.index(end) + len(end):].lstrip("\n")
        text = text[:text.index(begin)] + block + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    write_text(path, text)


def publish(section: str, own_file: Path, results_md: Path, name: str) -> None:
    """Write `section` to its own file and into `results_md` between `<!-- NAME:start -->` and
    `<!-- NAME:end -->` (appended the first time)."""
    from hrdeploy.io import write_text

    begin, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    write_text(own_file, section)
    replace_block(results_md, f"{begin}\n{section}{end}\n", begin, end)
