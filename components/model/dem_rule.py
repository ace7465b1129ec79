"""The rule that turns the model's output back into metres and display colours.

The ``prepare`` stage fixes how samples enter the model (``components.samples.dataset``):

- DEM: ``model = clip(encode(elevation - cell mean), -1, 1)`` on three channels, with one global
  scale ``S`` (``dem_scale_m``) and, when the DEM is companded, a knee ``k`` (``dem_knee_m``):
  ``encode(d) = d / S`` (linear) or ``asinh(d / k) / asinh(S / k)``
  (:mod:`components.samples.dem_encoding`);
- RGB: ``stored = clip(gain * reflectance, 0, 1) ** (1 / gamma)`` (uint16 in the shards) and
  ``model = stored / 65535 * 2 - 1``.

A generated DEM is relative: the cell mean was subtracted before training, so the model never
sees absolute heights. :class:`DemRule` adds a plausible base elevation back, looked up from the
prompt in ``stats.json``'s ``base_elevation_m`` table (median cell mean of the training cells per
descriptor combination; an estimate, not a measurement). The rule travels with a saved pipeline
as ``dem_rule.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from components.atomic import write_json_atomic
from components.samples.dem_encoding import check_dem_encoding, decode_dem, encode_dem

DEM_RULE_FILE = "dem_rule.json"
#: Which rule turns the model's output into metres: raised whenever the same output would give other
#: metres. Evaluations and model versions record it next to the caption grammar.
DEM_RULE_VERSION = 1

# The descriptor order of ``components.samples.stats.BASE_ELEVATION_KEYS`` (kept here so the
# pipeline does not import the prepare stage; a test checks that the two agree). It breaks ties
# between equally specific keys: a key naming earlier descriptors wins.
DESCRIPTOR_ORDER = ("biome", "landform_local", "country")

# What ``base_elevation_for`` returns as the key when the table has nothing to offer.
NO_BASE_KEY = "none"


def _parse_key(key: str) -> tuple[tuple[str, str], ...]:
    """``"biome=deserts|country=Spain"`` -> ``(("biome", "deserts"), ("country", "Spain"))``; "" -> ()."""
    if not key:
        return ()
    parts = []
    for part in key.split("|"):
        name, sep, value = part.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"base elevation key {key!r}: part {part!r} is not 'descriptor=value'")
        parts.append((name, value))
    return tuple(parts)


def _knee(value) -> float | None:
    return None if value is None else float(value)


def _descriptor_rank(name: str) -> tuple[int, str]:
    """Known descriptors in DESCRIPTOR_ORDER, unknown ones after them alphabetically."""
    if name in DESCRIPTOR_ORDER:
        return (DESCRIPTOR_ORDER.index(name), "")
    return (len(DESCRIPTOR_ORDER), name)


@dataclass(frozen=True)
class DemRule:
    """Constants that map model units back to metres (DEM) and to a displayable image (RGB).

    Attributes:
        dem_scale_m (float): the global DEM scale ``S`` in metres (per model unit when linear).
        base_elevation_m (dict[str, float]): base elevation (metres) per descriptor combination,
            keyed like ``"biome=deserts|landform_local=plains"`` (short forms); ``""`` is the global
            median. Default: empty (every prompt gets 0 m).
        rgb_gain (float): the reflectance gain of the RGB rule. Default 1.0.
        rgb_gamma (float): the gamma of the RGB rule. Default 1.0.
        dem_knee_m (float | None): the companding knee in metres; None (default): linear.
    """

    dem_scale_m: float
    base_elevation_m: dict[str, float] = field(default_factory=dict)
    rgb_gain: float = 1.0
    rgb_gamma: float = 1.0
    dem_knee_m: float | None = None

    def __post_init__(self) -> None:
        check_dem_encoding(self.dem_scale_m, self.dem_knee_m)
        if self.rgb_gain <= 0 or self.rgb_gamma <= 0:
            raise ValueError(f"rgb_gain and rgb_gamma must be positive, got {self.rgb_gain!r}, {self.rgb_gamma!r}")
        for key in self.base_elevation_m:
            _parse_key(key)  # fail now, not at generation time

    # ------------------------------------------------------------------ construction and files
    @classmethod
    def from_stats(cls, stats: Mapping) -> "DemRule":
        """The rule from ``data/samples/stats.json``'s content (``components.samples.stats.summarise``).

        Args:
            stats (Mapping): needs ``dem_scale_m``; ``rgb_rule`` (``gain``, ``gamma``) and
                ``base_elevation_m`` are optional (defaults 1.0, 1.0 and an empty table).
        """
        if "dem_scale_m" not in stats:
            raise KeyError("stats has no 'dem_scale_m': pass the content of data/samples/stats.json "
                           "(written by the prepare stage)")
        rgb = stats.get("rgb_rule") or {}
        table = {str(k): float(v) for k, v in (stats.get("base_elevation_m") or {}).items()}
        return cls(dem_scale_m=float(stats["dem_scale_m"]), base_elevation_m=table,
                   rgb_gain=float(rgb.get("gain", 1.0)), rgb_gamma=float(rgb.get("gamma", 1.0)),
                   dem_knee_m=_knee(stats.get("dem_knee_m")))

    def to_dict(self) -> dict:
        """The rule's fields (``dem_knee_m`` only when companded: a linear rule's file is unchanged)."""
        values = asdict(self)
        if values["dem_knee_m"] is None:
            del values["dem_knee_m"]
        return values

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/dem_rule.json`` atomically; returns its path."""
        return write_json_atomic(Path(folder) / DEM_RULE_FILE, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> "DemRule":
        """Read ``folder/dem_rule.json`` (as written by :meth:`save`)."""
        path = Path(folder) / DEM_RULE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{str(Path(folder))!r} has no {DEM_RULE_FILE}: the DEM rule part is "
                                    f"missing (save the pipeline with TerrainPipeline.save_pretrained, or "
                                    f"DemRule.from_stats(stats).save(folder))")
        data = json.loads(path.read_text())
        return cls(dem_scale_m=float(data["dem_scale_m"]),
                   base_elevation_m={str(k): float(v) for k, v in data.get("base_elevation_m", {}).items()},
                   rgb_gain=float(data.get("rgb_gain", 1.0)), rgb_gamma=float(data.get("rgb_gamma", 1.0)),
                   dem_knee_m=_knee(data.get("dem_knee_m")))

    # ------------------------------------------------------------------ conversions
    def to_metres(self, relative: np.ndarray | torch.Tensor, base_m: float | np.ndarray | list[float] = 0.0) -> np.ndarray:
        """Metres from a DEM in model units: ``decode(relative) + base_m`` (float32), where decode is
        ``relative * dem_scale_m`` for a linear rule.

        Args:
            relative (np.ndarray | torch.Tensor): DEM in model units, any shape; for a batch
                ``(B, H, W)``.
            base_m (float | array-like): base elevation in metres; a scalar, or one value per image
                (length ``B``) for a ``(B, ...)`` batch. Default 0.0.
        """
        if isinstance(relative, torch.Tensor):
            relative = relative.detach().to("cpu", torch.float32).numpy()
        rel = np.asarray(relative, dtype=np.float32)
        base = np.asarray(base_m, dtype=np.float32)
        if base.ndim == 1:
            if rel.ndim == 0 or base.shape[0] != rel.shape[0]:
                raise ValueError(f"base_m has {base.shape[0]} values but the DEM batch has shape {rel.shape}: "
                                 f"give one base per image or a single number")
            base = base.reshape((-1,) + (1,) * (rel.ndim - 1))
        elif base.ndim > 1:
            raise ValueError(f"base_m must be a number or a 1-D sequence, got shape {base.shape}")
        return (decode_dem(rel, self.dem_scale_m, self.dem_knee_m) + base).astype(np.float32, copy=False)

    def to_relative(self, metres: np.ndarray, base_m: float = 0.0) -> np.ndarray:
        """The inverse of :meth:`to_metres` without clipping: ``encode(metres - base_m)``."""
        relative = np.asarray(metres, dtype=np.float32) - np.float32(base_m)
        return encode_dem(relative, self.dem_scale_m, self.dem_knee_m).astype(np.float32)

    @staticmethod
    def rgb_to_uint8(x: np.ndarray | torch.Tensor) -> np.ndarray:
        """An 8-bit display image from RGB in model units: ``round(clip((x + 1) / 2, 0, 1) * 255)``.

        ``(x + 1) / 2`` is the *stored* encoding of the samples (gain and gamma already applied,
        i.e. display-encoded), so this is what the training images look like scaled to 8 bits,
        not reflectance (see :meth:`rgb_to_reflectance`). Any layout; the dtype becomes uint8.
        """
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        display = np.clip((np.asarray(x, dtype=np.float32) + 1.0) * 0.5, 0.0, 1.0)
        return np.rint(display * 255.0).astype(np.uint8)

    def rgb_to_reflectance(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Surface reflectance (float32) from RGB in model units, undoing gamma and gain.

        Values that the gain clipped at 1 during preparation come back as ``1 / gain``.
        """
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        stored = np.clip((np.asarray(x, dtype=np.float32) + 1.0) * 0.5, 0.0, 1.0)
        return (stored ** np.float32(self.rgb_gamma) / np.float32(self.rgb_gain)).astype(np.float32)

    # ------------------------------------------------------------------ base elevation
    def matched_descriptors(self, prompt: str) -> set[tuple[str, str]]:
        """``(descriptor, value)`` pairs of the table whose value occurs in ``prompt``.

        Case-insensitive whole-word matching, longest value first: a text span used by a longer
        value (e.g. "high mountains") is not matched again by a shorter one ("mountains").
        """
        pairs: dict[str, set[str]] = {}
        for key in self.base_elevation_m:
            for name, value in _parse_key(key):
                pairs.setdefault(value, set()).add(name)
        taken = np.zeros(len(prompt), dtype=bool)
        matched: set[tuple[str, str]] = set()
        for value in sorted(pairs, key=lambda v: (-len(v), v)):
            pattern = re.compile(r"(?<!\w)" + re.escape(value) + r"(?!\w)", re.IGNORECASE)
            for m in pattern.finditer(prompt):
                if not taken[m.start():m.end()].any():
                    taken[m.start():m.end()] = True
                    matched.update((name, value) for name in pairs[value])
        return matched

    def base_elevation_for(self, prompt: str) -> tuple[float, str]:
        """The base elevation (metres) for a prompt and the table key it came from.

        The most specific key whose every ``descriptor=value`` part occurs in the prompt wins
        (more parts beat fewer; among equally many, the key whose descriptors come first in
        ``DESCRIPTOR_ORDER``, then the key text). ``""`` (the global median) is used when no
        descriptor matches; an empty table gives ``(0.0, "none")``.
        """
        if not self.base_elevation_m:
            return 0.0, NO_BASE_KEY
        matched = self.matched_descriptors(prompt or "")
        best: tuple | None = None
        for key, value in self.base_elevation_m.items():
            parts = _parse_key(key)
            if all(p in matched for p in parts):
                rank = (-len(parts), tuple(_descriptor_rank(n) for n, _ in parts), key)
                if best is None or rank < best[0]:
                    best = (rank, key, float(value))
        if best is None:  # a table without "" and nothing matched
            return 0.0, NO_BASE_KEY
        return best[2], best[1]
