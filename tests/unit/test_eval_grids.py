"""The qualitative grids (paper Tables 2-4 and real vs generated) with tiny random pipelines."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from components.captions.builder import SLOTS, build_caption
from components.evaluation.grids import (
    DESCRIPTOR_CONFIGS,
    TABLE2_CAPTIONS,
    TABLE2_DESCRIPTIONS,
    TABLE4_CAPTIONS,
    GridLayout,
    caption_influence_grid,
    drop_descriptors,
    model_comparison_grid,
    pipeline_generate,
    plan_layout,
    real_vs_generated_grid,
    render_layout,
    seed_variability_grid,
)
from components.samples.shards import DESCRIPTOR_COLUMNS
from testsupport.pipelines import tiny_random_pipeline

PX = 32          # generated image size
PANEL = 32       # tile size in the grids (small: fast)
PIXEL_M = 10.0

CELLS = [
    {"grid_cell": "433U_1012R", "biome": "Temperate Broadleaf & Mixed Forests", "biome_short": "broadleaf forests",
     "ecoregion": None, "ecoregion_short": None, "landform_local": "hills", "landform_local_short": None,
     "landform_regional": None, "landform_regional_short": None, "country": "Germany", "country_short": None,
     "month": "August", "month_short": None},
    {"grid_cell": "300U_20L", "biome": "Tundra", "biome_short": "tundra", "ecoregion": None,
     "ecoregion_short": None, "landform_local": "mountains", "landform_local_short": None,
     "landform_regional": None, "landform_regional_short": None, "country": "Chile", "country_short": None,
     "month": "March", "month_short": None},
]
VALUES = {"biome": ["broadleaf forests", "tundra"], "geological": ["hills", "mountains"],
          "country": ["Germany", "Chile"], "month": ["August", "March"]}


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_image_matches(image, layout: GridLayout) -> None:
    assert image.size == (layout.width, layout.height)
    assert image.mode == "RGB"
    for panel in layout.panels:
        assert panel.x + panel.width <= layout.width and panel.y + panel.height <= layout.height
    json.dumps(layout.to_dict())  # the manifest is JSON-safe


@pytest.fixture(scope="module")
def generate():
    pipe = tiny_random_pipeline(list(TABLE2_CAPTIONS) + list(TABLE4_CAPTIONS), image_px=PX, seed=0)
    return pipeline_generate(pipe, num_inference_steps=2, guidance_scale=2.0)


@pytest.fixture(scope="module")
def other_generate():
    pipe = tiny_random_pipeline(list(TABLE4_CAPTIONS), image_px=PX, seed=7)
    return pipeline_generate(pipe, num_inference_steps=2, guidance_scale=2.0)


def test_table_constants():
    assert len(TABLE2_CAPTIONS) == 4 and len(TABLE4_CAPTIONS) == 4
    assert TABLE2_DESCRIPTIONS[0] == "broadleaf forests and hills in Germany in August"
    assert TABLE2_CAPTIONS[0] == "A Sentinel-2 image of broadleaf forests and hills in Germany in August"
    assert [label for label, _ in DESCRIPTOR_CONFIGS][:1] == ["all four"]
    assert all(set(kept) <= set(SLOTS) for _, kept in DESCRIPTOR_CONFIGS)


def test_seed_variability_grid(generate):
    captions, seeds = TABLE2_CAPTIONS[:2], (42, 50, 666)
    image, layout = seed_variability_grid(generate, captions, seeds, pixel_size_m=PIXEL_M, panel_px=PANEL)
    _check_image_matches(image, layout)
    assert (layout.rows, layout.cols) == (2, 3)
    assert len(layout.panels) == 6
    assert layout.col_labels == ["seed 42", "seed 50", "seed 666"]
    for r, caption in enumerate(captions):
        for c, seed in enumerate(seeds):
            panel = layout.panel(r, c)
            assert (panel.caption, panel.seed, panel.source) == (caption, seed, "generated")
    # panels of one row line up, columns move right
    assert layout.panel(0, 0).y == layout.panel(0, 2).y < layout.panel(1, 0).y
    assert layout.panel(0, 0).x < layout.panel(0, 1).x < layout.panel(0, 2).x


def test_seed_variability_panels_are_the_generations(generate):
    """The RGB tile in the PNG is the generation for that caption and seed."""
    image, layout = seed_variability_grid(generate, TABLE2_CAPTIONS[:1], (42, 50), pixel_size_m=PIXEL_M,
                                          panel_px=PX)  # tile = image size: no resampling
    rgb, _ = generate([TABLE2_CAPTIONS[0]], [50])
    panel = layout.panel(0, 1)
    top = panel.y + (panel.height - PX)
    tile = np.asarray(image)[top:top + PX, panel.x:panel.x + PX]
    # generated in a batch of 2 there, of 1 here: CPU batching may move a value by one grey level
    np.testing.assert_allclose(tile.astype(int), rgb[0].astype(int), atol=1)
    assert np.mean(tile == rgb[0]) > 0.99


def test_caption_influence_rows_drop_what_they_name(generate):
    named = ["A Sentinel-2 image of broadleaf forests in the Harz in Germany", "A Sentinel-2 image in Patagonia"]
    image, layout = caption_influence_grid(generate, CELLS, seed=42, pixel_size_m=PIXEL_M, panel_px=PANEL,
                                           named_area_prompts=named)
    _check_image_matches(image, layout)
    assert layout.rows == len(DESCRIPTOR_CONFIGS) + 1 and layout.cols == len(CELLS)
    assert len(layout.panels) == layout.rows * layout.cols
    assert layout.row_labels[-1] == "named area"
    assert layout.col_labels == ["cell 1 (433U_1012R)", "cell 2 (300U_20L)"]
    for r, (label, kept) in enumerate(DESCRIPTOR_CONFIGS):
        assert layout.row_labels[r] == label
        for c, cell in enumerate(CELLS):
            panel = layout.panel(r, c)
            assert panel.seed == 42
            assert panel.caption == build_caption(cell, use=kept)
            for slot in SLOTS:
                assert (VALUES[slot][c] in panel.caption) == (slot in kept), (label, slot, panel.caption)
    assert [layout.panel(layout.rows - 1, c).caption for c in range(2)] == named
    # the row names what it drops
    assert layout.panel(1, 0).caption == "A Sentinel-2 image of hills in Germany in August"
    assert layout.panel(len(DESCRIPTOR_CONFIGS) - 1, 1).caption == "A Sentinel-2 image in Chile"


def test_caption_influence_without_named_row(generate):
    image, layout = caption_influence_grid(generate, CELLS[:1], seed=3, pixel_size_m=PIXEL_M, panel_px=PANEL)
    _check_image_matches(image, layout)
    assert layout.rows == len(DESCRIPTOR_CONFIGS) and len(layout.panels) == len(DESCRIPTOR_CONFIGS)
    assert layout.col_labels == ["cell 1 (433U_1012R)"]
    with pytest.raises(ValueError, match="one prompt per cell"):
        caption_influence_grid(generate, CELLS, pixel_size_m=PIXEL_M, named_area_prompts=["only one"])


def test_drop_descriptors_covers_every_descriptor_column():
    dropped = drop_descriptors(CELLS[0], SLOTS)
    assert all(dropped[column] is None for column in DESCRIPTOR_COLUMNS)
    assert dropped["grid_cell"] == "433U_1012R" and CELLS[0]["country"] == "Germany"  # a copy
    assert build_caption(dropped) == ""
    with pytest.raises(ValueError, match="unknown descriptor"):
        drop_descriptors(CELLS[0], ["season"])


def test_model_comparison_labels_both_models(generate, other_generate):
    generators = {"w/ shadow correction": generate, "wo/ shadow correction": other_generate}
    captions = TABLE4_CAPTIONS[:2]
    image, layout = model_comparison_grid(generators, captions, seed=5, pixel_size_m=PIXEL_M, panel_px=PX)
    _check_image_matches(image, layout)
    assert layout.col_labels == list(generators) and layout.row_labels == list(captions)
    assert len(layout.panels) == 4
    for r, caption in enumerate(captions):
        for c, label in enumerate(generators):
            assert (layout.panel(r, c).caption, layout.panel(r, c).seed, layout.panel(r, c).source) == (caption, 5, label)
    # two different random models: their tiles differ
    pixels = np.asarray(image)
    tiles = [pixels[p.y + p.height - PX:p.y + p.height, p.x:p.x + PX] for p in (layout.panel(0, 0), layout.panel(0, 1))]
    assert not np.array_equal(*tiles)


def test_real_vs_generated(generate):
    rng = np.random.default_rng(0)
    real = [(build_caption(cell), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
             rng.normal(500, 50, (48, 48)).astype(np.float32)) for cell in CELLS]
    real[1][2][:4] = np.nan  # no-data rows are drawn black, not an error
    image, layout = real_vs_generated_grid(generate, real, seed=9, pixel_size_m=PIXEL_M, panel_px=PANEL)
    _check_image_matches(image, layout)
    assert layout.col_labels == ["real", "generated"] and len(layout.panels) == 4
    for r, (caption, _, _) in enumerate(real):
        assert (layout.panel(r, 0).source, layout.panel(r, 0).seed) == ("real", None)
        assert (layout.panel(r, 1).source, layout.panel(r, 1).seed) == ("generated", 9)
        assert layout.panel(r, 0).caption == layout.panel(r, 1).caption == caption


def test_rendering_is_deterministic(generate):
    first = seed_variability_grid(generate, TABLE2_CAPTIONS[2:], (1, 2), pixel_size_m=PIXEL_M, panel_px=PANEL)
    second = seed_variability_grid(generate, TABLE2_CAPTIONS[2:], (1, 2), pixel_size_m=PIXEL_M, panel_px=PANEL)
    assert _png_bytes(first[0]) == _png_bytes(second[0])
    assert first[1].to_dict() == second[1].to_dict()


def test_render_layout_checks_its_inputs():
    layout = plan_layout("t", ["a " * 60], ["b"], [(0, 0, "a very long caption " * 10, 1, "generated")], 16)
    rgb, dem = np.zeros((8, 8, 3), np.uint8), np.full((8, 8), np.nan)
    image = render_layout(layout, {(0, 0): (rgb, dem)}, PIXEL_M)  # long text and an all-NaN DEM still draw
    assert image.size == (layout.width, layout.height)
    with pytest.raises(ValueError, match="missing"):
        render_layout(layout, {}, PIXEL_M)
    with pytest.raises(ValueError, match="uint8"):
        render_layout(layout, {(0, 0): (rgb.astype(np.float32), dem)}, PIXEL_M)
    with pytest.raises(ValueError, match="dem_m"):
        render_layout(layout, {(0, 0): (rgb, dem[:4])}, PIXEL_M)
    with pytest.raises(ValueError, match="outside"):
        plan_layout("t", ["a"], ["b"], [(1, 0, "c", 1, "generated")])
    with pytest.raises(ValueError, match="generate must return"):
        seed_variability_grid(lambda p, s: (np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8))),
                              ["x", "y"], [1], pixel_size_m=PIXEL_M, batch_size=2)
