"""One self-contained HTML page that lays the figures out with their captions.

Images are referenced by paths relative to the page and all styling is inline, so the
folder opens offline, can be zipped or committed as it is, and renders the same anywhere.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic_write_bytes

REPORT_NAME = "report.html"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
p.caption, .note { color: #555; font-size: 0.92em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 0.8em; }
table { border-collapse: collapse; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; }
"""


@dataclass
class Section:
    """One figure of the report: its image files, or a note saying why it was skipped."""

    title: str
    caption: str = ""
    images: list[Path] = field(default_factory=list)
    note: str | None = None


def write_report(out_dir: str | Path, title: str, sections: list[Section],
                 summary: dict[str, str] | None = None, notes: list[str] | None = None) -> Path:
    """Write out_dir/report.html: a summary table, general notes, then each section."""
    out_dir = Path(out_dir)
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<title>{e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{e(title)}</h1>\n"]
    if summary:
        rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>\n" for k, v in summary.items())
        parts.append(f"<table>\n{rows}</table>\n")
    for note in notes or []:
        parts.append(f"<p class=\"note\">{e(note)}</p>\n")
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>\n")
        if s.note:
            parts.append(f"<p class=\"note\">{e(s.note)}</p>\n")
        for img in s.images:
            rel = Path(os.path.relpath(Path(img).resolve(), out_dir.resolve())).as_posix()
            parts.append(f"<figure><a href=\"{e(rel)}\"><img src=\"{e(rel)}\" alt=\"{e(s.title)}\"></a>"
                         f"</figure>\n")
        if s.caption:
            parts.append(f"<p class=\"caption\">{e(s.caption)}</p>\n")
    parts.append("</body>\n</html>\n")
    return atomic_write_bytes(out_dir / REPORT_NAME, "".join(parts).encode())
