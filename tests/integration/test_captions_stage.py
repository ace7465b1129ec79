"""The captions stage on the curated micro world: one row per kept cell, every descriptor, captions."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from components.captions.descriptors import DESCRIPTORS


@pytest.fixture(scope="module")
def captions(captioned):
    project, world = captioned
    return project, pd.read_parquet(project / "data/captions/captions.parquet"), world


def test_one_row_per_kept_cell_with_every_descriptor_and_source(captions):
    project, frame, world = captions
    index = pd.read_parquet(project / "data/curated/index.parquet")
    assert frame["grid_cell"].tolist() == index["grid_cell"].tolist()
    for name in DESCRIPTORS:
        assert {name, f"{name}_short", f"{name}_source"} <= set(frame.columns)
    # The synthetic world's cells are on land: country, biome and month are always known.
    assert frame["country"].notna().all() and frame["biome"].notna().all() and frame["month"].notna().all()
    # Its own region layers name every cell's ecoregion and regional landform.
    assert (frame["ecoregion_source"].notna()).all() and frame["landform_regional"].notna().all()
    truth = world.set_index("grid_cell").loc[frame["grid_cell"]]
    assert (frame["country"].to_numpy() == truth["country"].to_numpy()).all()


def test_local_landform_is_the_generated_class(captions):
    _, frame, world = captions
    truth = world.set_index("grid_cell").loc[frame["grid_cell"], "landform"].to_numpy()
    assert (frame["landform_local"].to_numpy() == truth).mean() >= 0.9


def test_captions_follow_the_paper_template_and_metrics_are_written(captions):
    project, frame, _ = captions
    row = frame.iloc[0]
    assert row["caption"] == (f"A Sentinel-2 image of {row['biome_short']} and {row['landform_local_short']} "
                              f"in {row['country_short']} in {row['month_short']}")
    report = json.loads((project / "reports/captions.json").read_text())
    assert report["cells"] == len(frame)
