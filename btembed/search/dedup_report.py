"""`btembed dedup --html`: one self-contained page of duplicate groups (thumbnails inline as data: URIs)."""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from ..errors import BtembedError
from ..images import open_image
from .dedup import Duplicates, Member

THUMB = 160

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;background:#f6f6f4;color:#222}
.group{background:#fff;border:1px solid #ccc;margin:0 0 1em;padding:.6em}
.group h2{font-size:1em;margin:0 0 .5em}
.members{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;width:170px;border:1px solid #ddd;padding:4px;text-align:center;font-size:12px}
figure.kept{border:3px solid #2e7d32}
figure img{max-width:160px;max-height:160px}
figcaption{word-break:break-all}
.tag{display:inline-block;color:#fff;background:#2e7d32;border-radius:3px;padding:0 .4em;font-size:11px}
.tag.exact{background:#6a1b9a}
"""


def _thumb_uri(path: Path) -> str:
    """A small JPEG of the image as a data: URI ('' when the file cannot be read any more)."""
    try:
        image = open_image(path, min_size=THUMB)
    except BtembedError:
        return ""
    image.thumbnail((THUMB, THUMB))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _figure(root: Path, m: Member) -> str:
    uri = _thumb_uri(root / m.path)
    tags = ('<span class="tag">kept</span> ' if m.kept else f"{m.score:.4f} ") + \
        ('<span class="tag exact">identical bytes</span>' if m.exact else "")
    img = f'<img src="{uri}" alt="">' if uri else "(unreadable)"
    return (f'<figure class="{"kept" if m.kept else ""}">{img}<figcaption>{tags}<br>{html.escape(m.path)}<br>'
            f"{m.width}×{m.height} · {_size(m.bytes)}</figcaption></figure>")


def render_report(duplicates: Duplicates, root: str | os.PathLike, title: str = "btembed duplicates") -> str:
    """The whole page as a string."""
    root = Path(root)
    removable = sum(m.bytes for g in duplicates.groups for m in g[1:])
    parts = [f"<!doctype html><html lang=en><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style><h1>{html.escape(title)}: {html.escape(str(root))}</h1>",
             f"<p>{len(duplicates.groups)} groups, {sum(len(g) for g in duplicates.groups)} images; "
             f"{_size(removable)} in the copies that are not kept. Threshold {duplicates.threshold} "
             f"(cosine to the kept image), keep the {duplicates.keep}. Nothing was deleted.</p>"]
    if duplicates.blank:
        parts.append(f"<p>Blank images (one flat colour), not grouped: "
                     f"{html.escape(', '.join(duplicates.blank))}</p>")
    for n, group in enumerate(duplicates.groups, 1):
        parts.append(f'<section class="group"><h2>Group {n} · {len(group)} images</h2><div class="members">'
                     + "".join(_figure(root, m) for m in group) + "</div></section>")
    return "\n".join(parts) + "\n</html>\n"


def write_report(duplicates: Duplicates, root: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the page to out (a temp file then a rename: never half a report)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(render_report(duplicates, root), encoding="utf-8")
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BtembedError(f"cannot write the report {out} ({e.strerror or e}); choose another --html path") from None
    return out
