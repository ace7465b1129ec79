"""Names for the synthetic world's ecoregions and landform regions, written the RESOLVE 2017 way.

RESOLVE Ecoregions 2017 names an ecoregion by place words, capitalised, then a habitat phrase in
lower case: "Western European broadleaf forests", "Mediterranean dry woodlands and steppe",
"Sumatran montane rain forests", "Northern Anatolian conifer and deciduous forests". The caption
pipeline anonymises a name by keeping its lower-case habitat words without "and"
(``components.captions.ecoregions.habitat_phrase``), and the paper's prompts are such phrases
("dry woodlands steppe", "montane rain forests"). So the world's names follow the same rule:

* the place is an invented adjective per country (``place_word``), never the country's name, so
  a caption does not name the country twice ("... of Canada boreal forests ... in Canada");
* the habitat is one of a few RESOLVE phrases of the cell's biome (``HABITATS``), shared across
  places, and it includes the paper's phrases so its prompts are in the training distribution;
* several ecoregions of one country and biome get a direction word ("Western", "Central", ...).

Pure module: no I/O.
"""
from __future__ import annotations

import hashlib

from components.captions.layers.biomes import ROCK_AND_ICE

__all__ = ["DIRECTIONS", "HABITATS", "LANDFORM_REGION_NOUN", "SPELLABLE_COUNTRIES", "ecoregion_names",
           "landform_region_name", "place_word"]

#: RESOLVE BIOME_NUM (or ROCK_AND_ICE) -> habitat phrases RESOLVE uses for that biome, lower case.
#: Biomes 1, 4, 11, 12 and 13 hold the paper's Table 2 and 4 phrases.
HABITATS: dict[int | str, tuple[str, ...]] = {
    1: ("moist forests", "montane rain forests", "lowland rain forests", "swamp forests"),
    2: ("dry forests", "dry deciduous forests", "thorn scrub forests"),
    3: ("pine-oak forests", "subtropical pine forests", "tropical pine forests"),
    4: ("broadleaf forests", "temperate forests", "mixed forests", "conifer and deciduous forests"),
    5: ("conifer forests", "montane conifer forests", "coastal forests", "subalpine conifer forests"),
    6: ("boreal forests", "taiga", "lowland taiga"),
    7: ("savanna", "woodland savanna", "forest-savanna mosaic", "bushlands and thickets"),
    8: ("steppe", "grasslands", "forest steppe", "short grasslands"),
    9: ("flooded grasslands", "flooded savanna", "wetlands"),
    10: ("montane grasslands", "puna", "alpine shrublands and meadows"),
    11: ("tundra", "alpine tundra", "coastal tundra"),
    12: ("dry woodlands and steppe", "sclerophyllous forests", "matorral", "woodlands and forests"),
    13: ("desert", "xeric shrublands", "deserts and xeric shrublands", "desert and semi-desert"),
    14: ("mangroves", "coastal mangroves"),
    # RESOLVE's ice caps are one ecoregion with this fixed name, not a biome.
    ROCK_AND_ICE: (ROCK_AND_ICE,),
}

#: Direction words for n ecoregions of one country and biome, west to east (the caller's order).
DIRECTIONS: dict[int, tuple[str, ...]] = {
    1: ("",),
    2: ("Western", "Eastern"),
    3: ("Western", "Central", "Eastern"),
    4: ("Far Western", "Western", "Eastern", "Far Eastern"),
    5: ("Far Western", "Western", "Central", "Eastern", "Far Eastern"),
}

#: Landform class -> the noun of a region of that class ("The Kalari Highlands").
LANDFORM_REGION_NOUN: dict[str, str] = {"plains": "Lowlands", "tablelands": "Plateau", "hills": "Hills",
                                        "low mountains": "Ranges", "high mountains": "Highlands"}

# Consonant-vowel syllables and a closing consonant: easy to read, unlike any real name by design.
_ONSETS = "bdgklmnprstvz"
_VOWELS = "aeiou"
_CODAS = ("", "n", "r", "s", "l")
_SYLLABLES = 3  # 13 * 5 syllables, cubed, times 5 codas: ~1.4 M words, so ~250 countries rarely collide
#: The Natural Earth country names these syllables can spell (the tests recompute the list), kept
#: out of every place word: "Danepal" would read as Nepal.
SPELLABLE_COUNTRIES: tuple[str, ...] = (
    "Aruba", "Belarus", "Belize", "Benin", "Gabon", "Iran", "Kosovo", "Lebanon", "Mali", "Nepal", "Niger", "Oman",
    "Panama", "Peru", "Senegal", "Sudan", "Togo", "Tuvalu",
)


def _digest(*parts: str) -> bytes:
    # blake2b, not hash(): Python salts str hashes per process, and the names must be stable.
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).digest()


def place_word(country: str) -> str:
    """An invented, capitalised place adjective for `country` ("Kalari"), the same in every run.

    Args:
        country (str): the country name as the caption writes it.

    Returns:
        str: letters only, capitalised, never containing `country` or a SPELLABLE_COUNTRIES name
        (case ignored).
    """
    avoid = [name.lower() for name in (country, *SPELLABLE_COUNTRIES)]
    for salt in range(100):
        digest = _digest("place", country, str(salt))
        syllables = [_ONSETS[digest[2 * i] % len(_ONSETS)] + _VOWELS[digest[2 * i + 1] % len(_VOWELS)]
                     for i in range(_SYLLABLES)]
        word = ("".join(syllables) + _CODAS[digest[-1] % len(_CODAS)]).capitalize()
        # A short country name ("Mali", "Peru") could come out of the syllables: draw again.
        if not any(name in word.lower() for name in avoid):
            return word
    raise ValueError(f"no place word for country {country!r} after 100 draws")


def _habitats(biome: int | str) -> tuple[str, ...]:
    try:
        return HABITATS[biome]
    except KeyError:
        raise ValueError(f"unknown biome {biome!r}: use a RESOLVE BIOME_NUM 1..14 or {ROCK_AND_ICE!r}") from None


def ecoregion_names(country: str, biome: int | str, n: int) -> list[str]:
    """Names for `n` ecoregions of one country and biome, west to east.

    Each is [direction] place word + habitat phrase: "Western Kalari montane grasslands",
    "Eastern Kalari puna". The habitats rotate from a per-country start, so every phrase of a
    biome turns up across countries and the same phrase appears under several places.

    Args:
        country (str): the country the ecoregions lie in.
        biome (int | str): RESOLVE BIOME_NUM 1..14, or ROCK_AND_ICE (then every name is "Rock and Ice").
        n (int): how many ecoregions, 1..len(DIRECTIONS).

    Raises:
        ValueError: an unknown biome, or n out of range.
    """
    habitats = _habitats(biome)
    if n not in DIRECTIONS:
        raise ValueError(f"n={n} ecoregions for {country!r}: use 1..{max(DIRECTIONS)}")
    if biome == ROCK_AND_ICE:
        return [ROCK_AND_ICE] * n
    start = int.from_bytes(_digest("habitat", country, str(biome))[:4], "big") % len(habitats)
    place = place_word(country)
    return [" ".join(w for w in (direction, place, habitats[(start + i) % len(habitats)]) if w)
            for i, direction in enumerate(DIRECTIONS[n])]


def landform_region_name(country: str, landform: str) -> str:
    """The named region of one landform class in one country: "The Kalari Highlands".

    Raises:
        ValueError: `landform` is not one of LANDFORM_REGION_NOUN's classes.
    """
    if landform not in LANDFORM_REGION_NOUN:
        raise ValueError(f"unknown landform {landform!r}: use one of {list(LANDFORM_REGION_NOUN)}")
    return f"The {place_word(country)} {LANDFORM_REGION_NOUN[landform]}"
