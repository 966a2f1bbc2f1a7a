"""Writing a picture or a report page to disk: SVG and HTML as text, PNG through resvg (a
Rust SVG renderer shipped as a wheel, no system libraries), always atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from surgery.errors import SurgeryError

PNG_ZOOM = 1.5  # box text stays sharp on a high-density screen


def svg_to_png(svg: str) -> bytes:
    """Rasterise SVG text with resvg (the ``png`` extra). Text needs a TrueType font on
    the machine (DejaVu Sans or Liberation Sans; any Linux desktop has one)."""
    try:
        import resvg_py
    except ImportError:
        raise SurgeryError(
            "writing a .png needs the resvg renderer, which is not installed",
            fix='pip install "surgery-nets[png]", or write an .svg',
        ) from None
    return bytes(resvg_py.svg_to_bytes(svg_string=svg, zoom=PNG_ZOOM, background="#ffffff"))


def write_picture(out: Path, text: str) -> Path:
    """Write ``text`` (SVG or HTML) to ``out``; a ``.png`` name rasterises the SVG first.
    The file appears complete or not at all."""
    data = svg_to_png(text) if out.suffix.lower() == ".png" else text.encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out
