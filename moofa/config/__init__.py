"""The YAML run configuration (docs/design.md#configuration, README): load, validate, fill defaults.

:func:`load_config` turns a ``configs/*.yaml`` file into a frozen :class:`RunConfig` (one typed
section per schema table below, every default filled in, see ``docs/design.md#configuration``);
bad content raises :class:`moofa.errors.ConfigError` with one line that names the file, the dotted
key and the value. Every reference config loads unchanged.

Keys the reference read but silently ignored are honoured here:

===================================  ==========================================================
key                                  meaning now (reference behaviour = the default)
===================================  ==========================================================
args.continuous_size                 true: training resolutions are every multiple of 4 between
                                     the smallest and largest model image size (25 sizes for
                                     128..224); false (default, what the reference really did):
                                     the model's size list. The reference YAMLs say ``true``,
                                     which now changes the training distribution
                                     (docs/design.md#departures-from-the-reference).
args.momentum                        SGD momentum (0.9). Not used by Adam.
args.no_nesterov                     true: plain momentum SGD; false (default): Nesterov.
args.not_sync_distributed_image_size true: each rank draws its own batch resolution (the seed
                                     mixes in the rank); false (default): all ranks agree.
args.dy_conv_scaling_mode            1 (default): elastic-kernel transform matrices on;
                                     -1: off (plain centre crop of the 7x7 weight, OFA).
args.print_frequency                 the trainer prints a progress line every N batches.
args.independent_distributed_sampling true: each rank samples its own subnets (the subnet seed
                                     mixes in the rank); false (default): one subnet everywhere.
args.base_stage_width                accepted only as ``proxyless`` (the reference's value) or
                                     null; it selects nothing, any other value is rejected.
===================================  ==========================================================

New optional keys (defaults reproduce the reference) are listed in the schema tables with
their meaning; ``search_config.max_constraint``/``min_constraint`` may be given in either order
(the reference's names were swapped): the sweep always runs from the smaller to the larger value.
Modules, one job each (this package re-exports their public names):

==============  ===================================================================================
``fields``      value checks and :class:`Field` (one row of a schema table)
``section``     :func:`schema_section` / :class:`Section`: a typed section derived from its table
``run_args``    ``args`` (and its dataset settings), the ``args_per_task`` phase entries
``subnet``      ``subnet_config``
``search``      ``search_config``
``dataset``     ``dataset_config`` and ``predictor_config``
``memory``      ``memory``
``deploy``      ``deploy``
``wandb``       ``wandb``
``run_config``  :class:`RunConfig`: the sections of one file
``phases``      progressive-shrinking steps, phase args and choices, validation subnets
``load``        YAML reading, :func:`load_config`, :func:`resolve_model`, the resolved-config JSON
==============  ===================================================================================
"""
from moofa.config.dataset import DATASET_SCHEMA, PREDICTOR_SCHEMA, DatasetSettings, PredictorRecipe
from moofa.config.deploy import DEPLOY_SCHEMA, DeploySettings
from moofa.config.fields import Check, Field
from moofa.config.load import (
    RESOLVED_CONFIG_NAME,
    default_data_path,
    load_config,
    resolve_model,
    save_resolved_config,
    search_constraints,
)
from moofa.config.memory import MEMORY_SCHEMA, MemorySettings
from moofa.config.phases import (
    DEFAULT_TASKS,
    DEFAULT_TASKS_PHASES,
    STEPS,
    last_task_args,
    phase_constraints,
    subnet_name,
    task_args,
    validation_image_sizes,
    validation_subnets,
)
from moofa.config.run_args import (
    ARGS_SCHEMA,
    DATASETS,
    DIGITS_SCHEMA,
    FINETUNE,
    FINETUNE_DEFAULTS,
    PHASE_SCHEMA,
    REFERENCE_PHASES,
    SYNTHETIC_SCHEMA,
    AnyArgs,
    Args,
    DigitsSettings,
    PhaseArgs,
    SyntheticSettings,
    TaskArgs,
)
from moofa.config.run_config import SECTIONS, RunConfig
from moofa.config.search import EXPORT_FORMATS, SEARCH_SCHEMA, SearchSettings
from moofa.config.section import Section, schema_section
from moofa.config.subnet import SUBNET_SCHEMA, SubnetSettings
from moofa.config.wandb import WANDB_SCHEMA, WandbSettings

__all__ = [
    "ARGS_SCHEMA", "DATASETS", "DATASET_SCHEMA", "DEFAULT_TASKS", "DEFAULT_TASKS_PHASES", "DEPLOY_SCHEMA",
    "DIGITS_SCHEMA", "EXPORT_FORMATS", "FINETUNE", "FINETUNE_DEFAULTS", "MEMORY_SCHEMA", "PHASE_SCHEMA",
    "PREDICTOR_SCHEMA", "REFERENCE_PHASES", "RESOLVED_CONFIG_NAME", "SEARCH_SCHEMA", "SECTIONS", "STEPS",
    "SUBNET_SCHEMA", "SYNTHETIC_SCHEMA", "WANDB_SCHEMA",
    "AnyArgs", "Args", "Check", "DatasetSettings", "DeploySettings", "DigitsSettings", "Field", "MemorySettings",
    "PhaseArgs", "PredictorRecipe", "RunConfig", "SearchSettings", "Section", "SubnetSettings",
    "SyntheticSettings", "TaskArgs", "WandbSettings",
    "default_data_path", "last_task_args", "load_config", "phase_constraints", "resolve_model",
    "save_resolved_config", "schema_section", "search_constraints", "subnet_name", "task_args",
    "validation_image_sizes", "validation_subnets",
]
