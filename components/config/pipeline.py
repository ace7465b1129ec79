"""The root of params.yaml: one field per group, each its own model (see components/config/__init__.py)."""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from components.config.base import NonBlank, ParamsModel, shadowing
from components.config.captions import CaptionsConfig, LayersConfig
from components.config.data import DataConfig
from components.config.evaluate import EvaluateConfig
from components.config.model import ModelConfig, VaeConfig
from components.config.operations import (AblationConfig, DeployConfig, RegistryConfig, RunnerConfig,
                                          VersioningConfig)
from components.config.prepare import LatentsConfig, PrepareConfig, ShadowConfig
from components.config.synth import SynthConfig
from components.config.train import SampleConfig, TrainConfig
from components.config.validate import ValidateConfig

# A group the stages index directly (params["train"]) is required; one they read with a default
# (params.get("sample") or {}) defaults to its model's defaults, so an older params.yaml still reads
# the same. `validate` is also pydantic's deprecated BaseModel.validate: the group keeps its name.
with shadowing("validate"):

    class PipelineConfig(ParamsModel):
        """The whole params.yaml, typed and checked (``components.params.load_config`` returns it).

        Attributes:
            profile: the profile last applied (configs/profiles/NAME.yaml), or None.
            data, synth, validate, layers, captions, prepare, shadow, model, vae, latents, train,
            sample, evaluate, runner, registry, versioning, deploy, ablation: one model per group,
            in params.yaml's order; ``ablation`` is None when params.yaml has no such group.
        """

        profile: Optional[NonBlank] = None
        data: DataConfig
        synth: SynthConfig = Field(default_factory=SynthConfig)
        validate: ValidateConfig
        layers: LayersConfig = Field(default_factory=LayersConfig)
        captions: CaptionsConfig
        prepare: PrepareConfig
        shadow: ShadowConfig
        model: ModelConfig = Field(default_factory=ModelConfig)
        vae: VaeConfig
        latents: LatentsConfig
        train: TrainConfig
        sample: SampleConfig = Field(default_factory=SampleConfig)
        evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
        runner: RunnerConfig = Field(default_factory=RunnerConfig)
        registry: RegistryConfig = Field(default_factory=RegistryConfig)
        versioning: VersioningConfig = Field(default_factory=VersioningConfig)
        deploy: DeployConfig = Field(default_factory=DeployConfig)
        ablation: Optional[AblationConfig] = None
