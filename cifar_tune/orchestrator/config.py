"""Where the config schema lived before 0.2 (it is now `cifar_tune.config`).

Kept only so that experiments written by earlier versions still resume: Tune pickled their
callbacks, and with them config objects under this module's name. New code imports
`cifar_tune.config`.
"""

from cifar_tune.config import (  # noqa: F401  (re-exported for unpickling)
    ConfigError,
    DataConfig,
    DebugConfig,
    ExperimentConfig,
    ExportConfig,
    ModelConfig,
    RayConfig,
    ResourcesConfig,
    TrainConfig,
    TuneConfig,
    TuneConfigSection,
    WandbConfig,
)
