"""Captions from descriptors: the paper's template, its subsets, named areas, augmentation.

The paper's template (MESA, section 3.2) with its four slots:

    "A Sentinel-2 image of {Biome} and {Geological} in {Country} in {Month}"

Grammar for any subset of the four slots (a slot is dropped with the word that joins it):

* the "of" phrase holds the biome and the geological slot: "of {B} and {G}", "of {B}" or
  "of {G}"; no "of" at all when both are absent;
* then " in {Country}", then " in {Month}", each only when present;
* no slot at all gives "" (the empty caption, for classifier-free guidance).

So, for one cell (biome short form "temperate broadleaf forests", local landform "hills",
Switzerland, March):

    all four            A Sentinel-2 image of temperate broadleaf forests and hills in Switzerland in March
    biome only          A Sentinel-2 image of temperate broadleaf forests
    geological+month    A Sentinel-2 image of hills in March
    country+month       A Sentinel-2 image in Switzerland in March
    month only          A Sentinel-2 image in March

Slot values (descriptors are a mapping such as a row of ``describe_cells``; for each
descriptor ``d`` the builder reads ``d_short`` and falls back to ``d`` (a full RESOLVE biome
name is shortened by ``DEFAULT_BIOME_SHORT_FORMS``); None, NaN, NA and "" count as unknown, and an unknown slot is left out exactly as if it had been dropped):

* Biome: the ecoregion name when there is one and it is not anonymised, else its habitat
  phrase, else the biome's short form. The paper's "randomly anonymise the ecoregion name" =
  keep only the ecoregion's habitat words ("Northern Anatolian conifer and deciduous forests"
  -> "conifer deciduous forests", see ``components.captions.ecoregions``); a cell without an
  ecoregion, or whose ecoregion has no habitat word ("Cerrado"), gets its biome's short form
  ("temperate broadleaf forests"); the full biome name never appears in a caption.
* Geological: the local landform class ("hills") or the regional landform name ("the Alps";
  a leading "The" is lower-cased mid-sentence), as asked. With ``paper_landform`` the local
  class is said in the paper's words: "low mountains" and "high mountains" become "mountains".
* Country and Month: as they are.

``build_captions(frame)`` does the same for every row of a ``describe_cells`` frame at once.

Named-area prompts (paper Table 3, "named prompts", e.g. Chihuahua) add the area as the first
place phrase: "A Sentinel-2 image of deserts and plains in the Chihuahuan Desert in Mexico in
May" (see ``named_area_caption``).

Pure module: no I/O; ``augment_caption`` is a pure function of its arguments.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from components.captions.descriptors import DEFAULT_BIOME_SHORT_FORMS
from components.captions.ecoregions import habitat_phrase
from components.captions.landform import paper_landform_word

__all__ = [
    "CAPTION_PREFIX",
    "CAPTION_GRAMMAR_VERSION",
    "SLOTS",
    "DEFAULT_AUGMENTATION",
    "AugmentationDraw",
    "build_caption",
    "build_captions",
    "named_area_caption",
    "draw_augmentation",
    "augment_caption",
    "check_augmentation",
]

CAPTION_PREFIX = "A Sentinel-2 image"
#: Which caption grammar built a caption: raised whenever the same descriptors would read differently
#: (2: issue 24, habitat phrases and the paper's landform words). Evaluations and model versions
#: record it, so models trained or evaluated under different grammars are not compared blindly.
CAPTION_GRAMMAR_VERSION = 2
#: The paper's four descriptors, in template order.
SLOTS: tuple[str, ...] = ("biome", "geological", "country", "month")
_GEOLOGICAL = {"local": "landform_local", "regional": "landform_regional"}

#: params.yaml `captions.augmentation` (training-time caption augmentation).
DEFAULT_AUGMENTATION: dict[str, Any] = {
    # "caption dropout" in the ablation: False turns the descriptor dropping off (the paper's
    # model had it on); p_uncond below is separate and applies either way
    "caption_dropout": True,
    # probability of dropping exactly k of the four slots (k = 0..3; sums to 1); the k slots are
    # chosen uniformly among the four, whether known or not, so a slot is dropped with
    # probability E[k] / 4 (0.25 with these values)
    "p_drop": {0: 0.4, 1: 0.3, 2: 0.2, 3: 0.1},
    # probability of the ecoregion's habitat phrase instead of its full name (the paper's
    # anonymisation; cells without an ecoregion name their biome's short form either way)
    "p_anonymise_ecoregion": 0.5,
    # probability of the regional geological descriptor instead of the local one (when the
    # cell has both; otherwise whichever it has)
    "p_regional": 0.5,
    # probability of the empty caption (classifier-free guidance), drawn first
    "p_uncond": 0.1,
    # probability of the paper's landform word ("mountains") instead of the finer class ("low
    # mountains", "high mountains"), so both kinds of prompt are in distribution; drawn last
    "p_paper_landform": 0.5,
}


# --------------------------------------------------------------------------------------------
# slot values


def _present(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    if isinstance(value, str):
        return bool(value.strip())
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):
        return True


def _value(descriptors: Mapping[str, Any], name: str) -> str | None:
    """The caption form of descriptor ``name``: ``name_short``, else ``name``; None if unknown."""
    for key in (f"{name}_short", name):
        value = descriptors.get(key) if hasattr(descriptors, "get") else None
        if _present(value):
            text = str(value).strip()
            if name == "landform_regional" and text.startswith("The "):
                text = "the " + text[4:]
            elif name == "biome" and key == name:  # a full RESOLVE name never goes in a caption
                text = DEFAULT_BIOME_SHORT_FORMS.get(text, text)
            return text
    return None


def _biome_slot(ecoregion: str | None, biome: str | None, anonymise_ecoregion: bool) -> str | None:
    """The ecoregion's name, or anonymised its habitat phrase; the biome's short form without either."""
    if ecoregion is not None and anonymise_ecoregion:
        ecoregion = habitat_phrase(ecoregion)
    return ecoregion or biome


def _geological_word(value: str | None, geological: str, paper_landform: bool) -> str | None:
    return paper_landform_word(value) if paper_landform and geological == "local" else value


def _slot_values(
    descriptors: Mapping[str, Any], geological: str, anonymise_ecoregion: bool, name_area: str | None = None,
    paper_landform: bool = False,
) -> dict[str, str | None]:
    if geological not in _GEOLOGICAL:
        raise ValueError(f"geological must be 'local' or 'regional', got {geological!r}")
    # naming the ecoregion as the area: the biome slot names the biome, not the place twice
    ecoregion = None if name_area == "ecoregion" else _value(descriptors, "ecoregion")
    return {
        "biome": _biome_slot(ecoregion, _value(descriptors, "biome"), anonymise_ecoregion),
        "geological": _geological_word(_value(descriptors, _GEOLOGICAL[geological]), geological, paper_landform),
        "country": _value(descriptors, "country"),
        "month": _value(descriptors, "month"),
    }


def _check_use(use: Iterable[str]) -> tuple[str, ...]:
    if isinstance(use, str):
        use = (use,)
    use = tuple(use)
    unknown = [u for u in use if u not in SLOTS]
    if unknown:
        raise ValueError(f"use: unknown descriptor(s) {unknown}; choose from {list(SLOTS)}")
    return use


def _sentence(biome: str | None, geological: str | None, places: Sequence[str | None]) -> str:
    """The grammar of the module docstring; places = the "in ..." phrases in order."""
    parts = [CAPTION_PREFIX]
    if biome and geological:
        parts.append(f" of {biome} and {geological}")
    elif biome or geological:
        parts.append(f" of {biome or geological}")
    for place in places:
        if place:
            parts.append(f" in {place}")
    if len(parts) == 1:
        return ""
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# building


def build_caption(
    descriptors: Mapping[str, Any],
    *,
    use: Iterable[str] = SLOTS,
    geological: str = "local",
    anonymise_ecoregion: bool = False,
    paper_landform: bool = False,
) -> str:
    """The caption of one cell from its descriptors.

    Args:
        descriptors: mapping (dict, pandas row) with descriptor values, e.g. a row of
            ``describe_cells``: reads ``biome``, ``ecoregion``, ``landform_local``,
            ``landform_regional``, ``country``, ``month`` (each via ``<name>_short`` first).
        use: which of ``SLOTS`` ("biome", "geological", "country", "month") to include
            (default: all four). Order does not matter; the template's order is kept.
        geological: "local" (the DEM's landform class, default) or "regional" (the named
            landform region).
        anonymise_ecoregion: the ecoregion's habitat phrase instead of its name (default False).
        paper_landform: the local landform in the paper's words ("mountains" for both mountain
            classes; default False: the class).

    Returns:
        The caption; "" when no used slot is known (the empty caption).
    """
    use = _check_use(use)
    v = _slot_values(descriptors, geological, anonymise_ecoregion, paper_landform=paper_landform)
    return _sentence(
        v["biome"] if "biome" in use else None,
        v["geological"] if "geological" in use else None,
        (v["country"] if "country" in use else None, v["month"] if "month" in use else None),
    )


def _column_values(frame: pd.DataFrame, name: str) -> np.ndarray:
    """``_value`` for a whole column pair: ``name_short`` where known, else ``name``, else None.

    Cleaned once per distinct value, not per row.
    """
    out = np.full(len(frame), None, dtype=object)
    for key in (name, f"{name}_short"):  # the short form wins: fill it last
        if key not in frame.columns:
            continue
        codes, uniques = pd.factorize(frame[key].to_numpy(dtype=object), use_na_sentinel=True)
        table = np.array([*(_value({name: u}, name) for u in uniques), None], dtype=object)
        values = table[codes]
        known = values != None  # noqa: E711 - elementwise on an object array
        out[known] = values[known]
    return out


def build_captions(
    frame: pd.DataFrame,
    *,
    use: Iterable[str] = SLOTS,
    geological: str = "local",
    anonymise_ecoregion: bool = False,
    paper_landform: bool = False,
) -> pd.Series:
    """``build_caption`` for every row of a ``describe_cells`` frame (same index), fast.

    Same arguments and result per row as ``build_caption``; about 1 s per million rows.
    """
    use = _check_use(use)
    if geological not in _GEOLOGICAL:
        raise ValueError(f"geological must be 'local' or 'regional', got {geological!r}")
    n = len(frame)
    nothing = np.full(n, None, dtype=object)
    biome = nothing
    if "biome" in use:
        biome = _column_values(frame, "biome")
        eco = _column_values(frame, "ecoregion")
        if anonymise_ecoregion:
            eco = np.array([habitat_phrase(e) for e in eco], dtype=object)  # cached per distinct name
        biome = np.where(eco != None, eco, biome)  # noqa: E711
    geo = nothing
    if "geological" in use:
        geo = _column_values(frame, _GEOLOGICAL[geological])
        geo = np.array([_geological_word(g, geological, paper_landform) for g in geo], dtype=object)
    country = _column_values(frame, "country") if "country" in use else nothing
    month = _column_values(frame, "month") if "month" in use else nothing
    captions = [_sentence(b, g, (c, m)) for b, g, c, m in zip(biome, geo, country, month)]
    return pd.Series(captions, index=frame.index, dtype=object, name="caption")


def named_area_caption(
    descriptors: Mapping[str, Any],
    area: str = "landform_regional",
    *,
    use: Iterable[str] = SLOTS,
    geological: str = "local",
    anonymise_ecoregion: bool = False,
) -> str:
    """A prompt that names a specific area (paper Table 3, "named prompts").

    The area becomes the first "in ..." phrase, before the country: "A Sentinel-2 image of
    deserts and plains in the Chihuahuan Desert in Mexico in May".

    Args:
        descriptors: as for ``build_caption``.
        area: "landform_regional" (the cell's named landform region), "ecoregion" (the cell's
            ecoregion name), or any other text, used as it is ("Chihuahua"). A cell's own
            names get "the" in front ("the Alps", "the Chihuahuan desert") unless they start
            with it. When the area is the ecoregion the biome slot names the biome; when it
            is the regional landform the geological slot is the local landform.
        use, geological, anonymise_ecoregion: as for ``build_caption``.

    Returns:
        The caption. ValueError when the cell has no such name (a named prompt without its
        name is not one).
    """
    use = _check_use(use)
    if area in ("landform_regional", "ecoregion"):
        name = _value(descriptors, area)
        if name is None:
            raise ValueError(f"named_area_caption: the descriptors have no {area} to name")
        if not name.lower().startswith("the "):
            name = "the " + name
        if area == "landform_regional":
            geological = "local"
    elif isinstance(area, str) and area.strip():
        name = area.strip()
    else:
        raise ValueError(f"area must be 'landform_regional', 'ecoregion' or a place name, got {area!r}")
    v = _slot_values(descriptors, geological, anonymise_ecoregion, name_area=area)
    return _sentence(
        v["biome"] if "biome" in use else None,
        v["geological"] if "geological" in use else None,
        (name, v["country"] if "country" in use else None, v["month"] if "month" in use else None),
    )


# --------------------------------------------------------------------------------------------
# augmentation


@dataclass(frozen=True)
class AugmentationDraw:
    """The random decisions of one augmented caption.

    uncond: the caption is empty (classifier-free guidance).
    n_dropped: how many of the four slots are dropped (0..3).
    dropped: which slots (template order).
    anonymise_ecoregion: the ecoregion's habitat phrase replaces its name.
    geological: "local" or "regional" (the preference; a cell lacking it uses the other).
    paper_landform: the local landform in the paper's words ("mountains").
    """

    uncond: bool
    n_dropped: int
    dropped: tuple[str, ...]
    anonymise_ecoregion: bool
    geological: str
    paper_landform: bool = False

    @property
    def kept(self) -> tuple[str, ...]:
        return tuple(s for s in SLOTS if s not in self.dropped)


def _probability(name: str, value: Any) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"captions.augmentation.{name} must be a probability, got {value!r}") from None
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"captions.augmentation.{name} must be within [0, 1], got {value!r}")
    return p


def check_augmentation(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULT_AUGMENTATION overlaid by ``params``, validated; p_drop keys become ints 0..3."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_AUGMENTATION))
    if unknown:
        raise ValueError(
            f"captions.augmentation: unknown key(s) {unknown}; valid keys: {sorted(DEFAULT_AUGMENTATION)}"
        )
    merged = {**DEFAULT_AUGMENTATION, **params}
    merged["caption_dropout"] = bool(merged["caption_dropout"])
    for key in ("p_anonymise_ecoregion", "p_regional", "p_uncond", "p_paper_landform"):
        merged[key] = _probability(key, merged[key])
    raw = merged["p_drop"]
    if not isinstance(raw, Mapping):
        raise ValueError(f"captions.augmentation.p_drop must map k (0..3) to a probability, got {raw!r}")
    p_drop = [0.0] * 4
    for key, value in raw.items():
        try:
            k = int(key)
        except (TypeError, ValueError):
            k = -1
        if k not in range(4) or str(key).strip() != str(k):
            raise ValueError(f"captions.augmentation.p_drop: key {key!r} is not a number of slots 0..3")
        p_drop[k] = _probability(f"p_drop[{k}]", value)
    if abs(sum(p_drop) - 1.0) > 1e-6:
        raise ValueError(f"captions.augmentation.p_drop must sum to 1, got {sum(p_drop):.6g} ({raw!r})")
    merged["p_drop"] = dict(enumerate(p_drop))
    return merged


def _rng(seed: int, epoch: int, sample_id: str | int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, str(sample_id)), in every process.

    blake2b of the three, not Python's hash() (salted per process for str).
    """
    key = f"{int(seed)}\x1f{int(epoch)}\x1f{sample_id}".encode()
    digest = hashlib.blake2b(key, digest_size=16, person=b"mesa-captions").digest()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int.from_bytes(digest, "little"))))


def draw_augmentation(
    seed: int, epoch: int, sample_id: str | int, params: Mapping[str, Any] | None = None
) -> AugmentationDraw:
    """The decisions ``augment_caption`` takes for (seed, epoch, sample_id).

    The same variates are drawn every time, in one order, whatever the probabilities: one
    uniform each for uncond, k, anonymise, regional, then a permutation of the four slots, then
    one uniform for the paper's landform word (last, so the draws before it are those of
    earlier versions). So changing one probability never reshuffles the other decisions, and
    every decision is taken even when uncond wins (the counts can be checked independently).
    """
    p = check_augmentation(params)
    rng = _rng(seed, epoch, sample_id)
    u_uncond, u_drop, u_anon, u_regional = rng.random(4)
    order = rng.permutation(len(SLOTS))
    u_paper = rng.random()
    k = 0
    if p["caption_dropout"]:
        cumulative = np.cumsum([p["p_drop"][i] for i in range(4)])
        k = int(min(np.searchsorted(cumulative, u_drop, side="right"), 3))
    dropped = tuple(SLOTS[i] for i in sorted(order[:k].tolist()))
    return AugmentationDraw(
        uncond=bool(u_uncond < p["p_uncond"]),
        n_dropped=k,
        dropped=dropped,
        anonymise_ecoregion=bool(u_anon < p["p_anonymise_ecoregion"]),
        geological="regional" if u_regional < p["p_regional"] else "local",
        paper_landform=bool(u_paper < p["p_paper_landform"]),
    )


def augment_caption(
    descriptors: Mapping[str, Any],
    seed: int,
    epoch: int,
    sample_id: str | int,
    params: Mapping[str, Any] | None = None,
) -> str:
    """A training caption: the paper's augmentation, a pure function of its arguments.

    With probability ``p_uncond`` the empty caption; otherwise the template with k of its four
    slots dropped (``p_drop``, when ``caption_dropout``), the ecoregion anonymised with
    ``p_anonymise_ecoregion``, the regional landform preferred with ``p_regional`` and the
    local one said in the paper's words with ``p_paper_landform`` (see
    ``DEFAULT_AUGMENTATION``). Equal (seed, epoch, sample_id) give the same caption in any
    process; another epoch draws again.

    Args:
        descriptors: as for ``build_caption`` (a ``describe_cells`` row, a shard's descriptors).
        seed: the run's seed.
        epoch: the epoch (or any counter that should change the draw).
        sample_id: the sample's stable id, e.g. its grid_cell (compared by ``str()``).
        params: ``captions.augmentation`` overrides of ``DEFAULT_AUGMENTATION``.
    """
    draw = draw_augmentation(seed, epoch, sample_id, params)
    if draw.uncond:
        return ""
    geological = draw.geological
    if _value(descriptors, _GEOLOGICAL[geological]) is None:
        geological = "local" if geological == "regional" else "regional"
        if _value(descriptors, _GEOLOGICAL[geological]) is None:
            geological = draw.geological
    return build_caption(
        descriptors, use=draw.kept, geological=geological, anonymise_ecoregion=draw.anonymise_ecoregion,
        paper_landform=draw.paper_landform,
    )
