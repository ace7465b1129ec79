"""params.yaml ``evaluate``: generations from the held-out cells' captions with fixed seeds."""
from __future__ import annotations

from pydantic import Field

from components.config.base import Count, NonBlank, NonNegativeFloat, NonNegativeInt, ParamsModel, tuple_of


class EvaluateConfig(ParamsModel):
    """params.yaml ``evaluate`` (components.evaluation.run.EvaluateParams is built from it).

    Attributes:
        seeds: seeds of every generation (the same for every model; at least one).
        min_generations: generate at least this many samples (captions repeat when needed).
        steps, guidance: sampling of the generations.
        grid_cells: held-out cells per grid.
        grid_captions: captions of the caption-influence grid; empty: the paper's Table 2.
        named_area_prompts: extra prompts naming areas.
        batch_size: generations per pipeline call.
        denoising_samples: held-out samples of the denoising loss (default 32).
    """

    GROUP = "evaluate"

    seeds: tuple_of(int) = Field((42, 50, 666), min_length=1)
    min_generations: NonNegativeInt = 60
    steps: Count = 50
    guidance: NonNegativeFloat = 7.0
    grid_cells: Count = 4
    grid_captions: tuple_of(NonBlank) = ()
    named_area_prompts: tuple_of(NonBlank) = ()
    batch_size: Count = 16
    denoising_samples: Count = 32
