"""The synthetic world's ecoregion and landform region names: RESOLVE 2017 style, no country twice.

An ecoregion name is [direction] + invented place word + RESOLVE habitat phrase, so the caption's
anonymised form (``habitat_phrase``) is exactly the habitat, and the paper's prompts are made of
words the demo world's captions hold.
"""
from __future__ import annotations

import calendar
import gzip
import json
import re
from collections import defaultdict
from datetime import datetime
from functools import lru_cache

import pyogrio
import pytest

from components.captions.ecoregions import habitat_phrase
from components.captions.layers.base import package_dir
from components.captions.layers.biomes import RESOLVE_BIOMES, ROCK_AND_ICE
from components.captions.layers.countries import NE_NAME_EXPANSIONS
from components.evaluation.grids import TABLE2_DESCRIPTIONS, TABLE4_DESCRIPTIONS
from components.majortom.synthetic import names
from components.majortom.synthetic.names import (
    DIRECTIONS,
    HABITATS,
    LANDFORM_REGION_NOUN,
    SPELLABLE_COUNTRIES,
    ecoregion_names,
    landform_region_name,
    place_word,
)
from tests.conftest import PROJECT_ROOT

#: Country and month names of the paper's prompts that the demo world has no cell of.
ABSENT_FROM_WORLD: tuple[str, ...] = ("New Zealand",)
#: Words of a caption that name nothing (the template's joiners).
FUNCTION_WORDS = frozenset({"and", "in", "of", "the"})


@lru_cache(maxsize=1)
def _countries() -> tuple[str, ...]:
    """Every country name the world's cells can carry: Natural Earth's, spelled out as the layer does."""
    with gzip.open(package_dir("geo_intel_offline") / "data" / "metadata.json.gz", "rt", encoding="utf-8") as fh:
        metadata = json.load(fh)
    return tuple(sorted({NE_NAME_EXPANSIONS.get(m["name"], m["name"]) for m in metadata.values()}))


def _bare_habitat(habitat: str) -> str:
    """A habitat as the caption anonymises it: without "and" ("dry woodlands steppe")."""
    return " ".join(w for w in habitat.split() if w != "and")


# ---------------------------------------------------------------------------------------------
# 1. Place words


def test_place_word_is_stable_capitalised_and_never_the_country():
    # Pinned: a per-process hash (Python's hash()) would rename the world's regions on every run.
    assert [place_word(c) for c in ("Canada", "Germany", "Brazil")] == ["Vidober", "Kirelus", "Tuvoson"]
    for country in _countries():
        word = place_word(country)
        assert word == place_word(country)
        assert word.isalpha() and word[0].isupper() and word[1:].islower(), (country, word)
        assert country.lower() not in word.lower(), (country, word)


def test_place_words_are_distinct_and_spell_no_country():
    words = {country: place_word(country) for country in _countries()}
    by_word = defaultdict(list)
    for country, word in words.items():
        by_word[word].append(country)
    assert {w: cs for w, cs in by_word.items() if len(cs) > 1} == {}
    inside = [(word, other) for word in words.values() for other in _countries() if other.lower() in word.lower()]
    assert inside == []


def test_spellable_countries_are_all_the_syllables_can_spell():
    # A country name fits inside a place word when it alternates consonant and vowel as the syllables
    # do and is no longer than a word: the list place_word avoids must be exactly those.
    onset, vowel = f"[{names._ONSETS}]", f"[{names._VOWELS}]"
    fits = re.compile(rf"^{vowel}?({onset}{vowel})*{onset}?$")
    longest = 2 * names._SYLLABLES + 1
    spellable = [c for c in _countries() if len(c) <= longest and fits.match(c.lower())]
    assert tuple(spellable) == SPELLABLE_COUNTRIES


# ---------------------------------------------------------------------------------------------
# 2. Habitats and ecoregion names


def test_habitats_are_lower_case_resolve_phrases_with_the_papers():
    assert set(HABITATS) == set(RESOLVE_BIOMES) | {ROCK_AND_ICE}
    assert HABITATS[ROCK_AND_ICE] == (ROCK_AND_ICE,)
    phrases = [h for num in RESOLVE_BIOMES for h in HABITATS[num]]
    assert len(phrases) == len(set(phrases)), "a phrase in two biomes would make two ecoregions one name"
    for num in RESOLVE_BIOMES:
        assert 2 <= len(HABITATS[num]) <= 4, num
        assert all(word == word.lower() for h in HABITATS[num] for word in h.split()), num
    paper = {4: {"broadleaf forests", "temperate forests", "mixed forests", "conifer and deciduous forests"},
             1: {"moist forests", "montane rain forests", "lowland rain forests"},
             12: {"dry woodlands and steppe", "sclerophyllous forests", "matorral"},
             11: {"tundra", "alpine tundra"},
             13: {"desert", "xeric shrublands", "deserts and xeric shrublands"}}
    for num, wanted in paper.items():
        assert wanted <= set(HABITATS[num]), num


def test_every_name_anonymises_to_its_habitat():
    for country in _countries():
        place = place_word(country)
        for num in RESOLVE_BIOMES:
            for n in DIRECTIONS:
                got = ecoregion_names(country, num, n)
                assert len(got) == len(set(got)) == n, (country, num, n)
                for name in got:
                    habitat = name.split(f"{place} ", 1)[1]
                    assert habitat in HABITATS[num], name
                    assert habitat_phrase(name) == _bare_habitat(habitat), name
                    assert country not in name, name
    assert ecoregion_names("Greenland", ROCK_AND_ICE, 2) == [ROCK_AND_ICE] * 2
    assert habitat_phrase(ROCK_AND_ICE) == "rock and ice"


def test_ecoregion_names_read_west_to_east_and_share_habitats_across_places():
    assert [n.split()[0] for n in ecoregion_names("Canada", 4, 3)] == ["Western", "Central", "Eastern"]
    assert ecoregion_names("Canada", 4, 1)[0].startswith(place_word("Canada") + " ")
    places_per_habitat = defaultdict(set)
    for country in _countries()[:40]:
        for name in ecoregion_names(country, 4, 1):
            places_per_habitat[habitat_phrase(name)].add(country)
    assert set(places_per_habitat) == {_bare_habitat(h) for h in HABITATS[4]}
    assert all(len(places) > 1 for places in places_per_habitat.values())
    with pytest.raises(ValueError, match="unknown biome"):
        ecoregion_names("Canada", 15, 1)
    with pytest.raises(ValueError, match="n=6"):
        ecoregion_names("Canada", 4, 6)


def test_landform_region_name():
    assert landform_region_name("Canada", "high mountains") == f"The {place_word('Canada')} Highlands"
    assert {landform_region_name("Chile", lf).split()[-1] for lf in LANDFORM_REGION_NOUN} == set(
        LANDFORM_REGION_NOUN.values())
    with pytest.raises(ValueError, match="unknown landform"):
        landform_region_name("Chile", "valleys")


# ---------------------------------------------------------------------------------------------
# 3. The world's region layers


def _cells():
    from components.majortom.grid import default_grid
    from components.majortom.synthetic.world import CellPlan

    grid = default_grid()
    # Nine Swiss-biome cells along a parallel (three ecoregions west to east), one Brazilian, one broken.
    spots = [(47.0, 6.0 + 0.5 * i, "Switzerland", 4, "hills", None) for i in range(9)]
    spots += [(-3.1, -60.0, "Brazil", 1, "plains", None), (46.0, 9.0, "Switzerland", 4, "hills", "all_cloud")]
    cells = []
    for i, (lat, lon, country, num, landform, broken) in enumerate(spots):
        row, col = grid.latlon_to_rowcol(lat, lon)
        clat, clon = grid.cell_centre_latlon(row, col)
        cells.append(CellPlan(
            index=i, grid_cell=grid.cell_name(row, col), row=int(row), col=int(col), centre_lat=float(clat),
            centre_lon=float(clon), landform=landform, base_elevation_m=300.0, country=country, biome_num=num,
            biome_name=RESOLVE_BIOMES[num], acquired=datetime(2020, 8, 1, 10, 0), cloud_cover=0.0,
            nodata_border=False, broken=broken, seed=i,
        ))
    return cells


def test_write_region_layers_names_the_resolve_way(tmp_path):
    from components.majortom.synthetic.world import (
        ecoregion_groups,
        write_region_layers,
    )

    cells = _cells()
    groups = ecoregion_groups(cells)
    assert [len(members) for *_, members in groups] == [1, 3, 3, 3]  # Brazil, then Switzerland's three runs
    swiss = [members for name, *_, members in groups if place_word("Switzerland") in name]
    assert max(c.centre_lon for c in swiss[0]) < min(c.centre_lon for c in swiss[1])

    paths = write_region_layers(tmp_path / "a", cells)
    eco = pyogrio.read_dataframe(paths["ecoregions"])
    assert eco["ECO_NAME"].tolist() == [name for name, *_ in groups]
    assert eco["ECO_NAME"].tolist() == (ecoregion_names("Brazil", 1, 1) + ecoregion_names("Switzerland", 4, 3))
    assert eco["BIOME_NUM"].tolist() == [1.0, 4.0, 4.0, 4.0]
    assert eco["BIOME_NAME"].tolist() == [RESOLVE_BIOMES[1]] + [RESOLVE_BIOMES[4]] * 3
    assert eco["REALM"].tolist() == ["Neotropic"] + ["Palearctic"] * 3
    for name in eco["ECO_NAME"]:
        assert "Switzerland" not in name and "Brazil" not in name
        assert habitat_phrase(name) in {_bare_habitat(h) for h in HABITATS[1] + HABITATS[4]}
    pieces = eco.geometry.tolist()
    assert all(a.intersection(b).area == 0 for i, a in enumerate(pieces) for b in pieces[i + 1:])
    landforms = pyogrio.read_dataframe(paths["landforms"])
    assert landforms["NAME"].tolist() == [landform_region_name("Brazil", "plains"),
                                          landform_region_name("Switzerland", "hills")]

    again = write_region_layers(tmp_path / "b", cells)
    for kind in paths:
        assert paths[kind].read_bytes() == again[kind].read_bytes(), kind


# ---------------------------------------------------------------------------------------------
# 4. The paper's prompts against the demo world's captions


@lru_cache(maxsize=1)
def _demo_good_cells():
    from components.config import SynthConfig
    from components.majortom.synthetic.world import plan_world
    from components.params import load_params, profile_overrides

    synth = dict(load_params(PROJECT_ROOT)["synth"])
    synth.update({key.split(".", 1)[1]: value for key, value in profile_overrides("demo", PROJECT_ROOT).items()
                  if key.startswith("synth.")})
    plan = plan_world(SynthConfig.from_params(synth))
    return tuple(c for c in plan.cells if c.broken is None and c.country and c.biome_name)


def test_paper_prompts_are_in_the_demo_worlds_vocabulary():
    from components.majortom.synthetic.world import ecoregion_groups

    cells = _demo_good_cells()
    eco_names = [name for name, *_ in ecoregion_groups(cells)]
    habitats = {habitat_phrase(name) for name in eco_names}
    countries = {c.country for c in cells}
    months = {calendar.month_name[c.acquired.month] for c in cells}
    regions = {landform_region_name(c.country, c.landform) for c in cells}
    landforms = {c.landform for c in cells} | {"mountains"}
    vocabulary = {w for text in (*eco_names, *habitats, *countries, *months, *regions, *landforms)
                  for w in text.split()}

    prompts = TABLE2_DESCRIPTIONS + TABLE4_DESCRIPTIONS
    content = {w for p in prompts for w in p.split() if w not in FUNCTION_WORDS}
    missing = content - vocabulary
    assert missing == {w for name in ABSENT_FROM_WORLD for w in name.split()}
    # Only place and month names may be missing, and only ones the world truly lacks.
    for name in ABSENT_FROM_WORLD:
        assert any(f" in {name}" in p for p in prompts) and name not in countries | months, name
    # Stronger than words: each prompt's habitat is a whole phrase the world's captions hold.
    assert {p.split(" and ")[0] for p in prompts} <= habitats
