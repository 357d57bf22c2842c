"""The readable audit report: Markdown (beside the files) and self-contained HTML (KFP UI).

One list of blocks renders to both: ``report.md`` links the thumbnails of the top label
issues as files (``thumbnails/01.jpg``), ``report.html`` inlines them as data URIs so
that it shows anywhere a single file is shown (a KFP HTML output, an MLflow artifact).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

__all__ = ["Report", "Thumbnail", "thumbnail_jpeg"]


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail in a table cell: its file (Markdown) and its bytes (HTML)."""

    path: str
    jpeg: bytes
    alt: str


def thumbnail_jpeg(jpeg: bytes, size: int = 96) -> bytes:
    """A small JPEG of a shard image (what the champion saw: the crop, resized)."""
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class Report:
    """Blocks of a report (headings, paragraphs, lists, tables), rendered to MD or HTML."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, text: str) -> None:
        """A section heading."""
        self.blocks.append(("h2", text))

    def para(self, text: str) -> None:
        """A paragraph (plain text; ``**bold**`` is kept in Markdown, bolded in HTML)."""
        self.blocks.append(("p", text))

    def items(self, items: Sequence[str]) -> None:
        """A bullet list."""
        self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table; a cell may be an :class:`Thumbnail`."""
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    # -- rendering -------------------------------------------------------------------------
    def markdown(self) -> str:
        """The report as Markdown (thumbnails as relative file links)."""
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h2":
                out += [f"## {value}", ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "ul":
                out += [f"- {v}" for v in value] + [""]
            else:
                header, rows = value
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                for row in rows:
                    out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
                out.append("")
        return "\n".join(out)

    def html(self) -> str:
        """The report as one self-contained HTML page (thumbnails inlined)."""
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h2":
                body.append(f"<h2>{html.escape(value)}</h2>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(v)}</li>" for v in value) + "</ul>")
            else:
                header, rows = value
                head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
                lines = "".join(
                    "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                    for row in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>")
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}"
            "table{border-collapse:collapse;margin:.5em 0}"
            "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}"
            "th{background:#f3f3f3}img{display:block}code{font-size:12px}"
        )
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{style}</style></head><body>"
            + "\n".join(body)
            + "</body></html>\n"
        )


def _md_cell(value: Any) -> str:
    if isinstance(value, Thumbnail):
        return f"![{value.alt}]({value.path})"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _inline(text: str) -> str:
    """Escape, then turn ``**x**`` into bold and ```x``` into code."""
    out = html.escape(text)
    parts = out.split("**")
    out = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_cell(value: Any) -> str:
    if isinstance(value, Thumbnail):
        data = base64.b64encode(value.jpeg).decode()
        return f"<img src='data:image/jpeg;base64,{data}' alt='{html.escape(value.alt)}'>"
    return _inline(str(value))
