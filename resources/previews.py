"""Chart metadata for the UI: where each chart is stored, and one small inline preview.

Charts are files of their artifact. Embedding them whole in the metadata put every PNG in the
run's event log twice (the output event and the materialization), most of the log's bytes.
So each chart is named by its stored path, and only the artifact's first chart (the one its
asset writes first) is embedded, downscaled to a thumbnail of 1-3 KB: enough to recognise
the chart, whose full size is one path away. (400 px and 32 colours made each preview 4-6 KB,
280 px 1.3-3.7 KB; a run's log holds one per charted asset. Fewer than 16 colours merged
the series of a 7-line chart.)
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping

from dagster import MetadataValue

PREVIEW = "preview"
# The longest edge of the preview, tried in turn until the PNG fits MAX_PREVIEW_BYTES.
PREVIEW_EDGES = (200, 160)
MAX_PREVIEW_BYTES = 3_000
_COLORS = 16  # matplotlib charts are flat colours: a small palette keeps their series apart


def chart_metadata(files: Mapping[str, bytes], uri_of: Callable[[str], str]) -> dict[str, MetadataValue]:
    """One path entry per ``.png`` (labelled by its stem) and a ``preview`` of the first one."""
    charts = [name for name in files if name.endswith(".png")]
    meta: dict[str, MetadataValue] = {name.removesuffix(".png"): MetadataValue.path(uri_of(name)) for name in charts}
    if charts:
        thumb = thumbnail(files[charts[0]])
        if thumb is not None:
            meta[PREVIEW] = MetadataValue.md(preview_markdown(charts[0], thumb))
    return meta


def thumbnail(png: bytes) -> bytes | None:
    """A downscaled palette PNG of ``png`` within MAX_PREVIEW_BYTES, or None if none fits."""
    from PIL import Image  # lazy: only an output with charts needs it

    with Image.open(io.BytesIO(png)) as img:
        rgb = img.convert("RGB")
    for edge in PREVIEW_EDGES:
        small = rgb.copy()
        small.thumbnail((edge, edge), Image.Resampling.LANCZOS)
        # octree keeps the few saturated series colours that median cut merges into greys
        quantized = small.quantize(colors=_COLORS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        quantized.save(buf, format="PNG", optimize=True)
        if buf.tell() <= MAX_PREVIEW_BYTES:
            return buf.getvalue()
    return None


def preview_markdown(name: str, thumb: bytes) -> str:
    """The thumbnail, and where the full size is: the chart's own path entry (its stem), not
    the path again (~130 B a run each)."""
    data = base64.b64encode(thumb).decode()
    return f"![{name}](data:image/png;base64,{data})\n\nFull size: the `{name.removesuffix('.png')}` path"
