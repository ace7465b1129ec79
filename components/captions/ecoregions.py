"""An ecoregion's habitat phrase: the paper's "randomly anonymise the ecoregion name".

The paper's own prompts show what its {Biome} slot holds when the ecoregion is anonymised:
"broadleaf forests", "dry woodlands steppe", "montane rain forests", "temperate forests",
"conifer deciduous forests", "tundra", "moist forests". These are RESOLVE 2017 ecoregion names
with their place words taken out ("Western European broadleaf forests", "Mediterranean dry
woodlands and steppe", "Sumatran montane rain forests", "Valdivian temperate forests",
"Northern Anatolian conifer and deciduous forests") and "and" dropped. RESOLVE writes place
words capitalised and habitat words in lower case, so the rule reads the case:

1. Split the name into words (spaces; commas dropped). A word whose first letter is upper case,
   or that holds a digit, is a place word ("Madeira-Tapajós", "St.", "Tocantins/Pindare").
2. A lower-case particle between two place words belongs to the place ("Sierra Madre *de*
   Oaxaca", "Gulf *of* California", "Mount Cameroon *and* Bioko").
3. Two kinds of capitalised word are habitat words all the same: a name's first word when it
   is a habitat adjective and a lower-case word follows ("Montane fynbos and renosterveld";
   but "Dry Chaco" is a place), and plant genera RESOLVE capitalises ("Araucaria moist
   forests", "Zambezian Baikiaea woodlands"); both are lower-cased.
4. What is left are the habitat words, in order, without "and" ("dry woodlands steppe").
5. A name with no lower-case word and every word a habitat word is a habitat itself ("Rock and
   Ice" -> "rock and ice"); a name with no habitat word at all ("Cerrado", "Llanos") has no
   phrase: ``habitat_phrase`` returns None and the caption falls back to the biome's short form.

Singular and plural are kept as written ("Sahara desert" -> "desert"). ``phrase_report`` runs
the rule over a whole attribute table (e.g. RESOLVE's 846 ecoregions) and flags the names
worth a look, for ``mesa data ecoregion-phrases``.

Pure module: no I/O.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["HABITAT_OPENERS", "GENERA", "PLACE_PARTICLES", "habitat_phrase", "PhraseRow", "phrase_report"]

#: Habitat adjectives that open a RESOLVE name in upper case only because they come first.
HABITAT_OPENERS: frozenset[str] = frozenset({
    "alpine", "subalpine", "montane", "lowland", "upland", "highland", "tropical", "subtropical", "temperate",
    "boreal", "coastal", "dry", "moist", "wet", "xeric", "mixed", "flooded", "swamp", "peat",
})
#: Plant genera (and the common names RESOLVE capitalises like them) that are habitat words.
GENERA: frozenset[str] = frozenset({
    "acacia", "araucaria", "baikiaea", "brigalow", "eucalyptus", "miombo", "mopane", "mulga", "nothofagus",
    "podocarpus", "polylepis", "spinifex",
})
#: Lower-case words that sit inside place names (Spanish, Portuguese, French, Italian, Dutch, English).
PLACE_PARTICLES: frozenset[str] = frozenset({
    "de", "del", "della", "des", "di", "do", "da", "dos", "das", "du", "el", "la", "las", "le", "les", "los",
    "of", "the", "van", "von", "y", "e", "and", "&",
})
#: Words that join habitats and are dropped from the phrase, as the paper's prompts do.
_JOINERS = frozenset({"and", "&"})
#: Names RESOLVE writes capitalised that are one habitat ("Rock and Ice").
_ALL_HABITAT_NAMES = frozenset({"rock", "ice", "tundra", "mangroves", "desert", "deserts"})


def _is_place(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return any(c.isdigit() for c in word) or (bool(letters) and letters[0].isupper())


def _bare(word: str) -> str:
    return word.strip(".,;:()'\"").lower()


def _words(name: str) -> list[str]:
    return [w for w in name.replace(",", " ").split() if w.strip(".,;:()'\"")]


def _is_habitat_name(words: list[str]) -> bool:
    """Rule 5: every word a habitat word or a joiner ("Rock and Ice")."""
    return all(_bare(w) in _JOINERS or _bare(w) in _ALL_HABITAT_NAMES for w in words)


def _habitat_flags(words: list[str]) -> list[bool]:
    """Per word: True where it is a habitat word (rules 1-3 of the module docstring)."""
    place = [_is_place(w) for w in words]
    habitat = [not p for p in place]
    for i, word in enumerate(words):
        if not place[i]:
            continue
        bare = _bare(word)
        lower_next = i + 1 < len(words) and not place[i + 1]
        if (i == 0 and bare in HABITAT_OPENERS and lower_next) or bare in GENERA:
            habitat[i] = True
    for i, word in enumerate(words):  # particles between place words are place
        between_places = 0 < i < len(words) - 1 and not habitat[i - 1] and not habitat[i + 1]
        if habitat[i] and _bare(word) in PLACE_PARTICLES and between_places:
            habitat[i] = False
    return habitat


@functools.lru_cache(maxsize=4096)
def habitat_phrase(name: str | None) -> str | None:
    """The habitat phrase of an ecoregion name, or None when it has none (see the module docstring).

    >>> habitat_phrase("Mediterranean dry woodlands and steppe")
    'dry woodlands steppe'
    >>> habitat_phrase("Sierra Madre de Oaxaca pine-oak forests")
    'pine-oak forests'
    >>> habitat_phrase("Cerrado") is None
    True
    """
    if not isinstance(name, str) or not name.strip():
        return None
    words = _words(name)
    if not words:
        return None
    if _is_habitat_name(words):
        return " ".join(_bare(w) for w in words)
    flags = _habitat_flags(words)
    kept = [_bare(w) if _is_place(w) else w.strip(".,;:()'\"") for w, h in zip(words, flags) if h]
    kept = [w for w in kept if w not in _JOINERS]
    while kept and kept[0] in PLACE_PARTICLES:  # "of" left by a place the rule took away
        kept.pop(0)
    return " ".join(kept) or None


@dataclass(frozen=True)
class PhraseRow:
    """One ecoregion of ``phrase_report``: its name, its phrase (None: none) and why to look."""

    name: str
    phrase: str | None
    note: str


def _note(name: str, phrase: str | None) -> str:
    words = _words(name)
    if phrase is None:
        return "no habitat word: the caption names the biome's short form"
    if _is_habitat_name(words):
        return "a habitat name (rule 5)"
    if not any(_is_place(w) for w in words):
        return "no place word: the phrase is the whole name"
    flags = _habitat_flags(words)
    lifted = [w for w, h in zip(words, flags) if h and _is_place(w)]
    if any(_bare(w) in GENERA for w in lifted):
        return "a genus kept: " + ", ".join(w for w in lifted if _bare(w) in GENERA)
    if lifted:
        return "opening habitat word kept: " + lifted[0]
    if len(phrase.split()) == 1 and phrase not in _ALL_HABITAT_NAMES:
        return "one word left"
    return ""


def phrase_report(names: Iterable[str | None]) -> list[PhraseRow]:
    """``habitat_phrase`` of every distinct name, sorted by name, with a note on the odd ones.

    Notes: no habitat word (falls back to the biome), no place word, a habitat name, a genus or
    an opening habitat word lifted to the phrase, a single word left. Empty names are skipped.
    """
    distinct = sorted({n.strip() for n in names if isinstance(n, str) and n.strip()})
    phrases = {n: habitat_phrase(n) for n in distinct}
    return [PhraseRow(n, phrase, _note(n, phrase)) for n, phrase in phrases.items()]
