"""The typed params.yaml: one pydantic model per group, checked in full whenever params.yaml is read.

``components.params.load_config(project)`` returns the ``PipelineConfig`` (loaded once per
process and file content); ``components.params.load_params(project)`` still returns the plain dict
(what DVC reads too), checked by the same models. Every model refuses unknown keys, and every
problem is reported at once as a ``ParamsError`` naming the key path, the value, what is allowed,
the file, and the profile when the applied profile sets that key.

=============  =====================================  ==========================================
group          model                                  module
=============  =====================================  ==========================================
data           DataConfig (ingest: IngestConfig)      components/config/data.py
synth          SynthConfig                            components/config/synth.py
validate       ValidateConfig                         components/config/validate.py
layers         LayersConfig (LayerSpec per role)      components/config/captions.py
captions       CaptionsConfig (AugmentationConfig)    components/config/captions.py
prepare        PrepareConfig                          components/config/prepare.py
shadow         ShadowConfig                           components/config/prepare.py
latents        LatentsConfig                          components/config/prepare.py
model          ModelConfig                            components/config/model.py
vae            VaeConfig                              components/config/model.py
train          TrainConfig                            components/config/train.py
sample         SampleConfig                           components/config/train.py
evaluate       EvaluateConfig                         components/config/evaluate.py
runner         RunnerConfig                           components/config/operations.py
registry       RegistryConfig (GateConfig)            components/config/operations.py
versioning     VersioningConfig                       components/config/operations.py
deploy         DeployConfig                           components/config/operations.py
ablation       AblationConfig                         components/config/operations.py
(root)         PipelineConfig                         components/config/pipeline.py
=============  =====================================  ==========================================

A group model checks one group alone too: ``TrainConfig.from_params(mapping)`` raises the same
``ParamsError`` with paths under ``train.``. This package imports nothing but pydantic and
components.layout (every stage loads it), so component tables it mirrors (e.g.
DEFAULT_AUGMENTATION) are held equal to it by tests/unit/test_params_schema.py.
"""
from components.config.base import ParamsModel
from components.config.captions import AugmentationConfig, CaptionsConfig, LandformThresholds, LayersConfig, LayerSpec
from components.config.data import DataConfig, IngestConfig, IngestFilters, Selection
from components.config.errors import FieldProblem, ParamsError, Problem
from components.config.evaluate import EvaluateConfig
from components.config.model import ModelConfig, TextConfig, VaeConfig
from components.config.operations import (AblationConfig, DeployConfig, GateConfig, RegistryConfig, RunnerConfig,
                                          VersioningConfig)
from components.config.pipeline import PipelineConfig
from components.config.prepare import LatentsConfig, PrepareConfig, RgbRule, ShadowConfig
from components.config.synth import SynthConfig
from components.config.train import EmaConfig, SampleConfig, TrainConfig
from components.config.validate import ValidateConfig

__all__ = [
    "AblationConfig", "AugmentationConfig", "CaptionsConfig", "DataConfig", "DeployConfig", "EmaConfig",
    "EvaluateConfig", "FieldProblem", "GateConfig", "IngestConfig", "IngestFilters", "LandformThresholds",
    "LatentsConfig", "LayerSpec", "LayersConfig", "ModelConfig", "ParamsError", "ParamsModel", "PipelineConfig",
    "PrepareConfig", "Problem", "RegistryConfig", "RgbRule", "RunnerConfig", "SampleConfig", "Selection",
    "ShadowConfig", "SynthConfig", "TextConfig", "TrainConfig", "VaeConfig", "ValidateConfig", "VersioningConfig",
]
