"""The paper's anonymisation: an ecoregion name -> its habitat phrase (components/captions/ecoregions.py)."""
from __future__ import annotations

import csv

import geopandas as gpd
import pytest
from shapely.geometry import box
from typer.testing import CliRunner

from components.captions.ecoregions import habitat_phrase, phrase_report

# The paper's prompts (Table 2, Table 4 and the text) and the RESOLVE 2017 names they read as.
PAPER = [
    ("Western European broadleaf forests", "broadleaf forests"),            # Germany, Table 2
    ("Mediterranean dry woodlands and steppe", "dry woodlands steppe"),     # Tunisia, Table 2
    ("Sumatran montane rain forests", "montane rain forests"),              # Indonesia, Table 4
    ("Valdivian temperate forests", "temperate forests"),                   # Chile, Table 4
    ("Northern Anatolian conifer and deciduous forests", "conifer deciduous forests"),  # Turkey
    ("Alaska-St. Elias Range tundra", "tundra"),                            # United States, Table 2
    ("Southwest Amazon moist forests", "moist forests"),                    # Bolivia, Table 2
]

HARD = [
    # lower-case particles inside place names
    ("Sierra Madre de Oaxaca pine-oak forests", "pine-oak forests"),
    ("Gulf of California xeric scrub", "xeric scrub"),
    ("Sierra Madre del Sur pine-oak forests", "pine-oak forests"),
    ("Serra do Mar coastal forests", "coastal forests"),
    ("Mount Cameroon and Bioko montane forests", "montane forests"),     # "and" between places
    # singular kept as written
    ("Sahara desert", "desert"),
    ("Chihuahuan desert", "desert"),
    # hyphenated, slashed and multi-word places; abbreviations
    ("Madeira-Tapajós moist forests", "moist forests"),
    ("Tocantins/Pindare moist forests", "moist forests"),
    ("Trans-Mexican Volcanic Belt pine-oak forests", "pine-oak forests"),
    ("St. Helena scrub and woodlands", "scrub woodlands"),
    ("Kalaallit Nunaat High Arctic tundra", "tundra"),
    # names that are habitat words only, or have none
    ("Rock and Ice", "rock and ice"),
    ("Cerrado", None),
    ("Dry Chaco", None),                       # "Dry" opens a place here: no lower-case word follows
    # opening habitat words and genera RESOLVE capitalises
    ("Montane fynbos and renosterveld", "montane fynbos renosterveld"),
    ("Lowland fynbos and renosterveld", "lowland fynbos renosterveld"),
    ("Araucaria moist forests", "araucaria moist forests"),
    ("Zambezian Baikiaea woodlands", "baikiaea woodlands"),
    # non-ASCII, in the place and in the habitat
    ("Cordillera de Mérida páramo", "páramo"),
    ("Hawai'i tropical dry forests", "tropical dry forests"),
    ("Araya and Paria xeric scrub", "xeric scrub"),
    # the synthetic world's names
    ("Northern Kalari montane grasslands", "montane grasslands"),
    # commas and stray spaces
    ("Baja California desert,  ", "desert"),
]


@pytest.mark.parametrize(("name", "phrase"), PAPER, ids=[p for _, p in PAPER])
def test_the_papers_prompts(name, phrase):
    assert habitat_phrase(name) == phrase


@pytest.mark.parametrize(("name", "phrase"), HARD, ids=[n for n, _ in HARD])
def test_hard_cases(name, phrase):
    assert habitat_phrase(name) == phrase


@pytest.mark.parametrize("value", [None, "", "   ", float("nan"), 12])
def test_no_name_no_phrase(value):
    assert habitat_phrase(value) is None


def test_phrase_report_flags_the_odd_ones():
    rows = phrase_report(["Cerrado", "Rock and Ice", "Araucaria moist forests", "Montane fynbos and renosterveld",
                          "Sahara desert", "Sahara desert", None, ""])
    assert [r.name for r in rows] == sorted({"Cerrado", "Rock and Ice", "Araucaria moist forests",
                                             "Montane fynbos and renosterveld", "Sahara desert"})
    notes = {r.name: r.note for r in rows}
    assert notes["Cerrado"].startswith("no habitat word")
    assert notes["Rock and Ice"].startswith("a habitat name")
    assert notes["Araucaria moist forests"] == "a genus kept: Araucaria"
    assert notes["Montane fynbos and renosterveld"] == "opening habitat word kept: Montane"
    assert notes["Sahara desert"] == ""


def test_cli_reports_a_resolve_like_table(tmp_path):
    from flows.cli import app

    path = tmp_path / "Ecoregions2017.gpkg"
    names = ["Western European broadleaf forests", "Cerrado", "Sahara desert"]
    gpd.GeoDataFrame({"ECO_NAME": names, "BIOME_NUM": [4.0, 7.0, 13.0]},
                     geometry=[box(i, 0, i + 1, 1) for i in range(3)], crs="EPSG:4326").to_file(path)
    out = tmp_path / "phrases.csv"
    result = CliRunner().invoke(app, ["data", "ecoregion-phrases", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Western European broadleaf forests" in result.output and "->  broadleaf forests" in result.output
    assert "(none: biome short form)" in result.output
    with open(out, newline="", encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == [
            {"name": "Cerrado", "phrase": "", "note": "no habitat word: the caption names the biome's short form"},
            {"name": "Sahara desert", "phrase": "desert", "note": ""},
            {"name": "Western European broadleaf forests", "phrase": "broadleaf forests", "note": ""},
        ]
    wrong = CliRunner().invoke(app, ["data", "ecoregion-phrases", str(path), "--field", "NAME"])
    assert wrong.exit_code != 0
    assert "no field 'NAME'" in wrong.output and "ECO_NAME" in wrong.output
