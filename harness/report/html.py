"""The report as one self-contained HTML file: sortable tables, figures embedded as base64.

The HTML is made from the report's markdown (the subset the report writes: headings,
paragraphs, ``-`` lists, pipe tables, images on their own line, inline code and bold),
so both say the same thing. It needs no network: the styles and the sorting script are
inline and every figure is a ``data:`` URI. Clicking a column header sorts the table by
that column (numbers numerically, ``—`` last); clicking again reverses the order.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_RULE = re.compile(r"^\|[\s:|-]+\|$")

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0 1.6em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f1f3f5; cursor: pointer; user-select: none; }
th.asc::after { content: ' \\25B2'; } th.desc::after { content: ' \\25BC'; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f4f4f4; padding: 0 0.2em; border-radius: 3px; }
img { max-width: 100%; border: 1px solid #eee; }
.tablewrap { overflow-x: auto; }
"""

_SCRIPT = """
function medxferKey(text) {
  var t = text.replace(/[*`%]/g, '').trim();
  var m = t.match(/^[+-]?\\d+(\\.\\d+)?/);
  return m ? parseFloat(m[0]) : null;
}
function medxferSort(th) {
  var table = th.closest('table'), body = table.tBodies[0];
  var index = Array.prototype.indexOf.call(th.parentNode.children, th);
  var ascending = !th.classList.contains('asc');
  Array.prototype.forEach.call(th.parentNode.children, function (h) {
    h.classList.remove('asc', 'desc'); });
  th.classList.add(ascending ? 'asc' : 'desc');
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[index].textContent, y = b.cells[index].textContent;
    var kx = medxferKey(x), ky = medxferKey(y);
    if (kx === null && ky === null) { return ascending ? x.localeCompare(y) : y.localeCompare(x); }
    if (kx === null) { return 1; }
    if (ky === null) { return -1; }
    return ascending ? kx - ky : ky - kx;
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () { medxferSort(th); });
});
"""


def render_html(markdown: str, title: str, images: Mapping[str, bytes]) -> str:
    """Turn the report's markdown into one self-contained HTML document.

    Args:
        markdown: the report's markdown.
        title: the document title.
        images: PNG bytes by the link target used in the markdown
            (``figures/demo-linear-heatmap.png``); a link without bytes keeps its alt text.

    Returns:
        The HTML text, ending with a newline.
    """
    body: list[str] = []
    blocks = re.split(r"\n\s*\n", markdown.strip("\n"))
    for block in blocks:
        lines = block.splitlines()
        first = lines[0]
        if first.startswith("#"):
            level = len(first) - len(first.lstrip("#"))
            body.append(f"<h{level}>{_inline(first[level:].strip())}</h{level}>")
        elif first.startswith("|"):
            body.append(_table(lines))
        elif all(line.startswith("- ") for line in lines):
            items = "".join(f"<li>{_inline(line[2:])}</li>" for line in lines)
            body.append(f"<ul>{items}</ul>")
        elif len(lines) == 1 and _IMAGE.match(first):
            match = _IMAGE.match(first)
            assert match is not None
            body.append(_image(match["alt"], match["src"], images))
        else:
            body.append(f"<p>{_inline(' '.join(lines))}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _inline(text: str) -> str:
    """Escape, then render ``code`` and **bold** spans."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            escaped = html.escape(part.replace("\\|", "|"))
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped))
    return "".join(out)


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1]
    return [cell.strip() for cell in _CELL_SPLIT.split(inner)]


def _table(lines: list[str]) -> str:
    header = _cells(lines[0])
    rule = _cells(lines[1]) if len(lines) > 1 and _RULE.match(lines[1].strip()) else []
    numeric = [cell.endswith(":") for cell in rule] + [False] * len(header)
    rows = lines[2:] if rule else lines[1:]

    def cell(tag: str, text: str, index: int) -> str:
        kind = ' class="num"' if numeric[index] else ""
        return f"<{tag}{kind}>{_inline(text)}</{tag}>"

    head = "".join(cell("th", text, i) for i, text in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", text, i) for i, text in enumerate(_cells(row))) + "</tr>"
        for row in rows
    )
    return (
        f'<div class="tablewrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _image(alt: str, src: str, images: Mapping[str, bytes]) -> str:
    data = images.get(src)
    if data is None:
        return f"<p><em>{_inline(alt)} (figure not drawn)</em></p>"
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{_inline(alt)}</figcaption></figure>"
    )
