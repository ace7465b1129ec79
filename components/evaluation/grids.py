"""The paper's qualitative tables, redrawn for any model as one labelled PNG each.

Every panel shows the RGB image next to the DEM drawn as colour relief with hillshade, under a
label with the panel's caption, its seed, where it comes from and the DEM's elevation range.

* ``seed_variability_grid``  -- paper Table 2: rows = captions, columns = seeds.
* ``caption_influence_grid`` -- paper Table 3: rows = which descriptors the caption keeps (plus
  named-area prompts when given), columns = held-out cells, each caption built from the cell's own
  descriptors.
* ``model_comparison_grid``  -- paper Table 4: rows = captions, columns = models (e.g. trained
  with and without shadow correction), same seed.
* ``real_vs_generated_grid`` -- held-out cells (real RGB and DEM) next to a generation from their
  own caption.

Each builder takes a *generate* function ``generate(prompts, seeds) -> (rgb, dem_m)`` (uint8
``(B, H, W, 3)`` and float ``(B, H, W)`` metres), so it works with any model; ``pipeline_generate``
makes one from a ``TerrainPipeline``. Each returns ``(PIL.Image, GridLayout)``: the layout is the
manifest (captions, seeds, sources and pixel boxes of every panel) and ``GridLayout.to_dict()`` is
JSON-safe.

Geometry of a panel at (x, y), ``panel_px`` = p: a label block of ``CAPTION_H`` pixels (caption
wrapped to ``CAPTION_LINES`` lines, then the seed line), then the RGB at (x, y + CAPTION_H) and the
DEM relief at (x + p + PAIR_GAP, y + CAPTION_H), both p x p. Rendering is deterministic: Pillow's
built-in font, nearest-neighbour resizing, no randomness.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from components.captions.builder import CAPTION_PREFIX, SLOTS, build_caption
from components.export.terrain import colour_relief

__all__ = [
    "Generate",
    "Panel",
    "GridLayout",
    "TABLE2_DESCRIPTIONS",
    "TABLE2_CAPTIONS",
    "TABLE2_SEEDS",
    "TABLE4_DESCRIPTIONS",
    "TABLE4_CAPTIONS",
    "DESCRIPTOR_CONFIGS",
    "SLOT_COLUMNS",
    "drop_descriptors",
    "plan_layout",
    "render_layout",
    "pipeline_generate",
    "seed_variability_grid",
    "caption_influence_grid",
    "model_comparison_grid",
    "real_vs_generated_grid",
]

#: generate(prompts, seeds) -> (rgb uint8 (B, H, W, 3), dem_m float (B, H, W))
Generate = Callable[[list[str], list[int]], tuple[np.ndarray, np.ndarray]]

# --------------------------------------------------------------------------------------------
# the paper's tables

#: Paper Table 2, the caption column verbatim (the paper prints them without the template's prefix).
TABLE2_DESCRIPTIONS: tuple[str, ...] = (
    "broadleaf forests and hills in Germany in August",
    "dry woodlands steppe and mountains in Tunisia in July",
    "tundra and mountains in United States of America in November",
    "moist forests and plains in Bolivia in July",
)
#: Paper Table 4 captions. The paper text extracted here lost them (the table is images only);
#: these are from REFERENCE.md section 1, which read them off the table.
TABLE4_DESCRIPTIONS: tuple[str, ...] = (
    "temperate forests and mountains in New Zealand in March",
    "temperate forests and mountains in Chile in March",
    "moist forests and plains in Brazil in May",
    "montane rain forests and mountains in Indonesia in July",
)


def _as_prompt(description: str) -> str:
    """A table description as the model was trained to read it: the template's prefix + " of "."""
    return f"{CAPTION_PREFIX} of {description}"


#: Table 2 as prompts: "A Sentinel-2 image of broadleaf forests and hills in Germany in August", ...
TABLE2_CAPTIONS: tuple[str, ...] = tuple(_as_prompt(d) for d in TABLE2_DESCRIPTIONS)
#: Table 4 as prompts.
TABLE4_CAPTIONS: tuple[str, ...] = tuple(_as_prompt(d) for d in TABLE4_DESCRIPTIONS)
#: Paper Table 2's seeds (columns).
TABLE2_SEEDS: tuple[int, ...] = (42, 50, 666)

#: Paper Table 3's rows: (row label, the slots the caption keeps), slots as in ``builder.SLOTS``
#: (biome, geological, country, month). The paper's legend: club = biome, triangle = geological,
#: bowtie = country, double dagger = month.
DESCRIPTOR_CONFIGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("all four", ("biome", "geological", "country", "month")),
    ("no biome", ("geological", "country", "month")),
    ("no geological", ("biome", "country", "month")),
    ("no country", ("biome", "geological", "month")),
    ("no month", ("biome", "geological", "country")),
    ("biome + geological only", ("biome", "geological")),
    ("country only", ("country",)),
)

#: The descriptor columns (``samples.shards.DESCRIPTOR_COLUMNS``) each caption slot reads; a
#: slot is dropped by setting all of them to None (the builder leaves an unknown slot out).
SLOT_COLUMNS: dict[str, tuple[str, ...]] = {
    "biome": ("biome", "biome_short", "ecoregion", "ecoregion_short"),
    "geological": ("landform_local", "landform_local_short", "landform_regional", "landform_regional_short"),
    "country": ("country", "country_short"),
    "month": ("month", "month_short"),
}

# --------------------------------------------------------------------------------------------
# geometry (pixels)

MARGIN = 8          # around the whole grid
GAP = 8             # between panels
PAIR_GAP = 2        # between a panel's RGB and its DEM
LINE_H = 12         # one text line of Pillow's default font, with leading
TITLE_H = 2 * LINE_H
COL_LABEL_LINES = 2
COL_LABEL_H = (COL_LABEL_LINES + 1) * LINE_H + 4  # label lines + the "RGB / DEM relief" line
ROW_LABEL_W = 150
CAPTION_LINES = 3
CAPTION_H = (CAPTION_LINES + 1) * LINE_H + 4      # caption lines + the seed line
MIN_PANEL_PX = 16
ELLIPSIS = "..."    # ASCII: the default bitmap font has no "…"


@dataclass
class Panel:
    """One panel of a grid: an RGB image and its DEM relief, under a caption/seed label.

    Attributes:
        row (int), col (int): position in the grid (0-based).
        caption (str): the prompt (generated panels) or the cell's caption (real panels).
        seed (int | None): the generation seed; None for a real cell.
        source (str): "generated", "real", or a model label (model comparison).
        x (int), y (int): top-left pixel of the panel (its label block) in the PNG.
        width (int), height (int): the panel's size in pixels, label block included.
    """

    row: int
    col: int
    caption: str
    seed: int | None
    source: str
    x: int
    y: int
    width: int
    height: int


@dataclass
class GridLayout:
    """A grid's manifest: labels and every panel's content and pixel box.

    Attributes:
        title (str): drawn at the top.
        rows (int), cols (int): grid size.
        row_labels (list[str]), col_labels (list[str]): one per row / column.
        panels (list[Panel]): row-major; a grid need not fill every (row, col).
        panel_px (int): side of each RGB and DEM tile in pixels. Default 128.
        width (int), height (int): the PNG's size in pixels. Default 0 (set by ``plan_layout``).
    """

    title: str
    rows: int
    cols: int
    row_labels: list[str]
    col_labels: list[str]
    panels: list[Panel] = field(default_factory=list)
    panel_px: int = 128
    width: int = 0
    height: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (str, int, None, lists and dicts only)."""
        return asdict(self)

    def panel(self, row: int, col: int) -> Panel:
        """The panel at (row, col); KeyError when the grid has none there."""
        for p in self.panels:
            if (p.row, p.col) == (row, col):
                return p
        raise KeyError(f"no panel at row {row}, col {col}")


class _Spec(NamedTuple):
    """What a panel holds, before it has a position."""

    row: int
    col: int
    caption: str
    seed: int | None
    source: str


def _panel_size(panel_px: int) -> tuple[int, int]:
    """(width, height) of one panel: two tiles side by side under the label block."""
    return 2 * panel_px + PAIR_GAP, CAPTION_H + panel_px


def _panel_origin(row: int, col: int, panel_px: int) -> tuple[int, int]:
    """Top-left pixel of panel (row, col)."""
    width, height = _panel_size(panel_px)
    return (MARGIN + ROW_LABEL_W + col * (width + GAP),
            MARGIN + TITLE_H + COL_LABEL_H + row * (height + GAP))


def plan_layout(title: str, row_labels: Sequence[str], col_labels: Sequence[str],
                specs: Sequence[tuple[int, int, str, int | None, str]], panel_px: int = 128) -> GridLayout:
    """Place panels on a rows x cols grid.

    Args:
        title (str): the grid's title.
        row_labels (Sequence[str]): one label per row (sets the row count).
        col_labels (Sequence[str]): one label per column (sets the column count).
        specs (Sequence[tuple]): (row, col, caption, seed | None, source) per panel; each
            (row, col) at most once and inside the grid.
        panel_px (int): side of each RGB and DEM tile in pixels (>= 16). Default 128.

    Returns:
        The GridLayout, panels in row-major order.
    """
    if int(panel_px) < MIN_PANEL_PX:
        raise ValueError(f"panel_px must be at least {MIN_PANEL_PX}, got {panel_px}")
    rows, cols = len(row_labels), len(col_labels)
    if rows == 0 or cols == 0:
        raise ValueError(f"a grid needs at least one row and one column, got {rows} x {cols}")
    seen: set[tuple[int, int]] = set()
    panels = []
    for spec in sorted((_Spec(*s) for s in specs), key=lambda s: (s.row, s.col)):
        if not (0 <= spec.row < rows and 0 <= spec.col < cols):
            raise ValueError(f"panel ({spec.row}, {spec.col}) is outside the {rows} x {cols} grid")
        if (spec.row, spec.col) in seen:
            raise ValueError(f"two panels at ({spec.row}, {spec.col})")
        seen.add((spec.row, spec.col))
        x, y = _panel_origin(spec.row, spec.col, panel_px)
        width, height = _panel_size(panel_px)
        panels.append(Panel(row=int(spec.row), col=int(spec.col), caption=str(spec.caption),
                            seed=None if spec.seed is None else int(spec.seed), source=str(spec.source),
                            x=x, y=y, width=width, height=height))
    # The far corner of the last panel, plus the margin (panels are uniform, so this is exact).
    right, bottom = _panel_origin(rows, cols, panel_px)
    return GridLayout(title=str(title), rows=rows, cols=cols, row_labels=[str(s) for s in row_labels],
                      col_labels=[str(s) for s in col_labels], panels=panels, panel_px=int(panel_px),
                      width=right - GAP + MARGIN, height=bottom - GAP + MARGIN)


# --------------------------------------------------------------------------------------------
# text


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font: ships with Pillow, so the PNG does not depend on system fonts."""
    return ImageFont.load_default()


def _fits(font, text: str, width: int) -> bool:
    return font.getlength(text) <= width


def _ellipsize(font, text: str, width: int) -> str:
    """``text`` ended with "..." (marks text left out), cut so that it fits ``width`` pixels."""
    while text and not _fits(font, text + ELLIPSIS, width):
        text = text[:-1]
    return text.rstrip() + ELLIPSIS


def _shorten(font, text: str, width: int) -> str:
    """``text`` as it is when it fits ``width`` pixels, else cut and ended with "..."."""
    return text if _fits(font, text, width) else _ellipsize(font, text, width)


def _split_long_word(font, word: str, width: int) -> list[str]:
    """A word wider than ``width`` cut into pieces that fit (at least one character each)."""
    pieces, current = [], ""
    for char in word:
        if current and not _fits(font, current + char, width):
            pieces.append(current)
            current = ""
        current += char
    return pieces + ([current] if current else [])


def _wrap(font, text: str, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; past ``max_lines`` the last line ends with "..."."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        for piece in ([word] if _fits(font, word, width) else _split_long_word(font, word, width)):
            candidate = f"{current} {piece}" if current else piece
            if _fits(font, candidate, width):
                current = candidate
            else:
                lines.append(current)
                current = piece
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _ellipsize(font, lines[-1], width)
    return lines


def _draw_lines(draw: ImageDraw.ImageDraw, font, lines: Sequence[str], x: int, y: int) -> None:
    for i, line in enumerate(lines):
        draw.text((x, y + i * LINE_H), line, fill="black", font=font)


# --------------------------------------------------------------------------------------------
# rendering


def _check_pair(key: tuple[int, int], rgb: Any, dem_m: Any) -> tuple[np.ndarray, np.ndarray]:
    """The panel's RGB (uint8 (H, W, 3)) and DEM ((H, W), same size) as arrays, or ValueError."""
    rgb = np.asarray(rgb)
    dem = np.asarray(dem_m, dtype=np.float64)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"panel {key}: rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if dem.ndim != 2 or dem.shape != rgb.shape[:2]:
        raise ValueError(f"panel {key}: dem_m must be (H, W) = {rgb.shape[:2]}, got {dem.shape}")
    return rgb, dem


def _relief(dem_m: np.ndarray, pixel_size_m: float) -> np.ndarray:
    """Colour relief with hillshade; all black when the DEM has no valid pixel (colour_relief needs one)."""
    if not np.isfinite(dem_m).any():
        return np.zeros((*dem_m.shape, 3), dtype=np.uint8)
    return colour_relief(dem_m, pixel_size_m)


def _tile(array: np.ndarray, panel_px: int) -> Image.Image:
    """An (H, W, 3) uint8 array as a panel_px square (nearest neighbour: exact and deterministic)."""
    return Image.fromarray(np.ascontiguousarray(array)).resize((panel_px, panel_px), Image.NEAREST)


def _seed_line(panel: Panel, dem_m: np.ndarray) -> str:
    """Seed, source and elevation range, e.g. "seed 42 | generated | 120..860 m"."""
    parts = [f"seed {panel.seed}" if panel.seed is not None else "no seed", panel.source]
    if np.isfinite(dem_m).any():
        parts.append(f"{np.nanmin(dem_m):.0f}..{np.nanmax(dem_m):.0f} m")
    return " | ".join(parts)


def _draw_panel(canvas: Image.Image, draw: ImageDraw.ImageDraw, font, panel: Panel, rgb: np.ndarray,
                dem_m: np.ndarray, pixel_size_m: float, panel_px: int) -> None:
    caption = panel.caption if panel.caption.strip() else "(empty caption)"
    lines = _wrap(font, caption, panel.width, CAPTION_LINES)
    _draw_lines(draw, font, lines, panel.x, panel.y)
    seed_y = panel.y + CAPTION_LINES * LINE_H
    draw.text((panel.x, seed_y), _shorten(font, _seed_line(panel, dem_m), panel.width), fill="dimgray", font=font)
    top = panel.y + CAPTION_H
    canvas.paste(_tile(rgb, panel_px), (panel.x, top))
    canvas.paste(_tile(_relief(dem_m, pixel_size_m), panel_px), (panel.x + panel_px + PAIR_GAP, top))


def _draw_headers(draw: ImageDraw.ImageDraw, font, layout: GridLayout) -> None:
    """Title, column labels (with "RGB" / "DEM relief" over each tile) and row labels."""
    panel_w, _ = _panel_size(layout.panel_px)
    draw.text((MARGIN, MARGIN), _shorten(font, layout.title, layout.width - 2 * MARGIN), fill="black", font=font)
    for col, label in enumerate(layout.col_labels):
        x, y = _panel_origin(0, col, layout.panel_px)
        top = MARGIN + TITLE_H
        _draw_lines(draw, font, _wrap(font, label, panel_w, COL_LABEL_LINES), x, top)
        hint_y = top + COL_LABEL_LINES * LINE_H
        draw.text((x, hint_y), "RGB", fill="dimgray", font=font)
        draw.text((x + layout.panel_px + PAIR_GAP, hint_y), "DEM relief", fill="dimgray", font=font)
    row_lines = max(1, (CAPTION_H + layout.panel_px) // LINE_H)
    for row, label in enumerate(layout.row_labels):
        _, y = _panel_origin(row, 0, layout.panel_px)
        _draw_lines(draw, font, _wrap(font, label, ROW_LABEL_W - GAP, row_lines), MARGIN, y)


def render_layout(layout: GridLayout, images: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]],
                  pixel_size_m: float) -> Image.Image:
    """Draw a grid: title, row and column labels, and every panel's label, RGB and DEM relief.

    Args:
        layout (GridLayout): from ``plan_layout`` (sets the tile size, ``layout.panel_px``).
        images (Mapping[(row, col), (rgb, dem_m)]): one entry per panel of the layout and no
            other: rgb uint8 (H, W, 3), dem_m float (H, W) metres (NaN = no data). Tiles are
            resized to ``layout.panel_px`` squares by nearest neighbour.
        pixel_size_m (float): the DEM's pixel size in metres (> 0), for the hillshade.

    Returns:
        An RGB PIL.Image of ``(layout.width, layout.height)``; the same inputs give the same pixels.
    """
    if not pixel_size_m > 0:
        raise ValueError(f"pixel_size_m must be > 0, got {pixel_size_m}")
    wanted = {(p.row, p.col) for p in layout.panels}
    given = {tuple(k) for k in images}
    if wanted != given:
        raise ValueError(f"images must cover exactly the layout's panels: missing {sorted(wanted - given)}, "
                         f"extra {sorted(given - wanted)}")
    font = _font()
    canvas = Image.new("RGB", (layout.width, layout.height), "white")
    draw = ImageDraw.Draw(canvas)
    _draw_headers(draw, font, layout)
    for panel in layout.panels:
        rgb, dem = _check_pair((panel.row, panel.col), *images[(panel.row, panel.col)])
        _draw_panel(canvas, draw, font, panel, rgb, dem, pixel_size_m, layout.panel_px)
    return canvas


# --------------------------------------------------------------------------------------------
# generation


def pipeline_generate(pipeline: Any, num_inference_steps: int = 50, guidance_scale: float = 7.0) -> Generate:
    """A ``generate`` function over a ``TerrainPipeline``.

    Args:
        pipeline (TerrainPipeline): called as ``pipeline(prompt=[...], seed=[...], ...)``.
        num_inference_steps (int): sampler steps. Default 50 (the paper's DDIM steps).
        guidance_scale (float): classifier-free guidance. Default 7.0 (the paper's).
    """
    def generate(prompts: list[str], seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        out = pipeline(prompt=list(prompts), seed=[int(s) for s in seeds],
                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        return np.asarray(out.rgb), np.asarray(out.dem_m)

    return generate


def _check_batch(rgb: Any, dem_m: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A generate function's output as arrays of the right shapes, or ValueError."""
    rgb, dem = np.asarray(rgb), np.asarray(dem_m)
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[0] != n or rgb.shape[3] != 3:
        raise ValueError(f"generate must return rgb uint8 ({n}, H, W, 3), got {rgb.dtype} {rgb.shape}")
    if dem.shape != rgb.shape[:3]:
        raise ValueError(f"generate must return dem_m of shape {rgb.shape[:3]}, got {dem.shape}")
    return rgb, dem


def _generate_specs(generate: Generate, specs: Sequence[_Spec], batch_size: int
                    ) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Generate every spec's panel, ``batch_size`` prompts per call (bounds the model's memory)."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(specs), batch_size):
        chunk = specs[start:start + batch_size]
        rgb, dem = _check_batch(*generate([s.caption for s in chunk], [int(s.seed) for s in chunk]), len(chunk))
        for i, spec in enumerate(chunk):
            images[(spec.row, spec.col)] = (rgb[i], dem[i])
    return images


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return int(seed)


def _check_nonempty(values: Sequence, what: str) -> list:
    values = list(values)
    if not values:
        raise ValueError(f"{what} is empty: a grid needs at least one")
    return values


# --------------------------------------------------------------------------------------------
# the grids


def seed_variability_grid(generate: Generate, captions: Sequence[str] = TABLE2_CAPTIONS,
                          seeds: Sequence[int] = TABLE2_SEEDS, *, pixel_size_m: float, panel_px: int = 128,
                          batch_size: int = 4, title: str = "Seed variability (paper Table 2)"
                          ) -> tuple[Image.Image, GridLayout]:
    """Paper Table 2: rows = captions, columns = seeds.

    Args:
        generate (Generate): ``generate(prompts, seeds) -> (rgb, dem_m)``.
        captions (Sequence[str]): one row each. Default ``TABLE2_CAPTIONS``.
        seeds (Sequence[int]): one column each. Default (42, 50, 666).
        pixel_size_m (float): the generated DEM's pixel size in metres (keyword).
        panel_px (int): tile side in pixels. Default 128.
        batch_size (int): prompts per generate call. Default 4.
        title (str): the grid's title.
    """
    captions = [str(c) for c in _check_nonempty(captions, "captions")]
    seeds = [_check_seed(s) for s in _check_nonempty(seeds, "seeds")]
    specs = [_Spec(r, c, caption, seed, "generated") for r, caption in enumerate(captions)
             for c, seed in enumerate(seeds)]
    layout = plan_layout(title, captions, [f"seed {s}" for s in seeds], specs, panel_px)
    return render_layout(layout, _generate_specs(generate, specs, batch_size), pixel_size_m), layout


def drop_descriptors(cell: Mapping[str, Any], dropped: Sequence[str]) -> dict[str, Any]:
    """A copy of a cell's descriptors with the columns of the ``dropped`` slots set to None.

    Args:
        cell (Mapping[str, Any]): descriptor values (``DESCRIPTOR_COLUMNS`` keys; others kept).
        dropped (Sequence[str]): slots from ``builder.SLOTS`` (biome, geological, country, month).
    """
    unknown = [s for s in dropped if s not in SLOT_COLUMNS]
    if unknown:
        raise ValueError(f"unknown descriptor slot(s) {unknown}; choose from {list(SLOTS)}")
    out = dict(cell)
    for slot in dropped:
        for column in SLOT_COLUMNS[slot]:
            out[column] = None
    return out


def _influence_caption(cell: Mapping[str, Any], kept: Sequence[str], geological: str) -> str:
    """The cell's own caption with only the ``kept`` slots (the others dropped to None)."""
    dropped = [s for s in SLOTS if s not in kept]
    return build_caption(drop_descriptors(cell, dropped), geological=geological)


def _cell_label(cell: Mapping[str, Any], index: int) -> str:
    """Column label: "cell 1", with the cell's grid id when it has one ("cell 1 (433U_1012R)")."""
    grid_cell = cell.get("grid_cell")
    return f"cell {index + 1}" + (f" ({grid_cell})" if isinstance(grid_cell, str) and grid_cell else "")


def caption_influence_grid(generate: Generate, cells: Sequence[Mapping[str, str | None]], seed: int = 42, *,
                           pixel_size_m: float, named_area_prompts: Sequence[str] = (), geological: str = "local",
                           panel_px: int = 128, batch_size: int = 4,
                           title: str = "Influence of captions (paper Table 3)") -> tuple[Image.Image, GridLayout]:
    """Paper Table 3: rows = ``DESCRIPTOR_CONFIGS`` (+ "named area"), columns = held-out cells.

    Args:
        generate (Generate): ``generate(prompts, seeds) -> (rgb, dem_m)``.
        cells (Sequence[Mapping]): each a held-out cell's descriptors (``DESCRIPTOR_COLUMNS``
            values; an optional "grid_cell" goes into the column label).
        seed (int): the one seed of every panel. Default 42.
        pixel_size_m (float): the generated DEM's pixel size in metres (keyword).
        named_area_prompts (Sequence[str]): full prompts naming a specific area, one per cell
            (e.g. from ``builder.named_area_caption``); given, they make a last "named area" row.
            Default () (no such row).
        geological (str): "local" or "regional" landform for the geological slot. Default "local".
        panel_px (int), batch_size (int), title (str): as for ``seed_variability_grid``.
    """
    cells = _check_nonempty(cells, "cells")
    seed = _check_seed(seed)
    named = [str(p) for p in named_area_prompts]
    if named and len(named) != len(cells):
        raise ValueError(f"named_area_prompts needs one prompt per cell ({len(cells)}), got {len(named)}")
    row_labels = [label for label, _ in DESCRIPTOR_CONFIGS] + (["named area"] if named else [])
    specs = [_Spec(r, c, _influence_caption(cell, kept, geological), seed, "generated")
             for r, (_, kept) in enumerate(DESCRIPTOR_CONFIGS) for c, cell in enumerate(cells)]
    specs += [_Spec(len(DESCRIPTOR_CONFIGS), c, prompt, seed, "generated") for c, prompt in enumerate(named)]
    layout = plan_layout(title, row_labels, [_cell_label(cell, i) for i, cell in enumerate(cells)], specs, panel_px)
    return render_layout(layout, _generate_specs(generate, specs, batch_size), pixel_size_m), layout


def model_comparison_grid(generators: Mapping[str, Generate], captions: Sequence[str] = TABLE4_CAPTIONS,
                          seed: int = 42, *, pixel_size_m: float, panel_px: int = 128, batch_size: int = 4,
                          title: str = "Model comparison (paper Table 4)") -> tuple[Image.Image, GridLayout]:
    """Paper Table 4: rows = captions, columns = models, every panel with the same seed.

    Args:
        generators (Mapping[str, Generate]): model label -> its generate function (at least
            one; e.g. {"w/ shadow correction": ..., "wo/ shadow correction": ...}), in column order.
        captions (Sequence[str]): one row each. Default ``TABLE4_CAPTIONS``.
        seed (int): the one seed of every panel. Default 42.
        pixel_size_m (float): the generated DEM's pixel size in metres (keyword).
        panel_px (int), batch_size (int), title (str): as for ``seed_variability_grid``.
    """
    labels = [str(label) for label in _check_nonempty(list(generators), "generators")]
    captions = [str(c) for c in _check_nonempty(captions, "captions")]
    seed = _check_seed(seed)
    images: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    specs: list[_Spec] = []
    for c, (label, generate) in enumerate(generators.items()):
        column = [_Spec(r, c, caption, seed, str(label)) for r, caption in enumerate(captions)]
        images.update(_generate_specs(generate, column, batch_size))
        specs += column
    layout = plan_layout(title, captions, labels, specs, panel_px)
    return render_layout(layout, images, pixel_size_m), layout


def real_vs_generated_grid(generate: Generate, real: Sequence[tuple[str, np.ndarray, np.ndarray]], seed: int = 42,
                           *, pixel_size_m: float, panel_px: int = 128, batch_size: int = 4,
                           title: str = "Held-out cells: real vs generated from their caption"
                           ) -> tuple[Image.Image, GridLayout]:
    """Rows = held-out cells; column 0 the real RGB and DEM, column 1 a generation from its caption.

    Args:
        generate (Generate): ``generate(prompts, seeds) -> (rgb, dem_m)``.
        real (Sequence[(caption, rgb, dem_m)]): each cell's caption, RGB (uint8 (H, W, 3)) and
            DEM (float (H, W) metres, NaN = no data).
        seed (int): the seed of every generation. Default 42.
        pixel_size_m (float): DEM pixel size in metres for the hillshade of both columns (bring
            the real DEM to the generated grid first) (keyword).
        panel_px (int), batch_size (int), title (str): as for ``seed_variability_grid``.
    """
    real = _check_nonempty(real, "real")
    seed = _check_seed(seed)
    real_specs = [_Spec(r, 0, str(caption), None, "real") for r, (caption, _, _) in enumerate(real)]
    generated = [_Spec(r, 1, str(caption), seed, "generated") for r, (caption, _, _) in enumerate(real)]
    images = {(r, 0): _check_pair((r, 0), rgb, dem) for r, (_, rgb, dem) in enumerate(real)}
    images.update(_generate_specs(generate, generated, batch_size))
    layout = plan_layout(title, [f"cell {r + 1}" for r in range(len(real))], ["real", "generated"],
                         real_specs + generated, panel_px)
    return render_layout(layout, images, pixel_size_m), layout
