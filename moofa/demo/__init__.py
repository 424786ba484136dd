"""The demo: the whole pipeline on an embedded dataset (:mod:`moofa.demo.pipeline`), its
acceptance checks (:mod:`moofa.demo.checks`) and its report (:mod:`moofa.demo.report`); the
command line is :mod:`moofa.cli.demo` (``python -m moofa.demo``)."""
from moofa.demo.checks import (
    ALPHA,
    Checks,
    baseline_check,
    budget_rows,
    collect_checks,
    finetune_folder,
    finetune_row,
    predictor_metrics,
    scatter_path,
    teacher_check,
    teacher_info_path,
)
from moofa.demo.pipeline import (
    DEFAULT_OUT,
    LABELS,
    MODEL_CONFIGS,
    QUICK_OUT,
    SCRIPT_MODULES,
    STAGES_NAME,
    STATE_NAME,
    SUMMARY_NAME,
    Runner,
    Stage,
    StageResult,
    demo_config,
    pipeline_stages,
    run_demo,
    write_demo_configs,
)
from moofa.demo.report import plot_memory_histograms, report_text, time_table

__all__ = ["ALPHA", "Checks", "baseline_check", "budget_rows",
           "collect_checks", "finetune_folder", "finetune_row", "predictor_metrics",
           "scatter_path", "teacher_check", "teacher_info_path", "DEFAULT_OUT",
           "LABELS", "MODEL_CONFIGS", "QUICK_OUT", "SCRIPT_MODULES", "STAGES_NAME", "STATE_NAME",
           "SUMMARY_NAME", "Runner", "Stage", "StageResult", "demo_config", "pipeline_stages",
           "run_demo", "write_demo_configs", "plot_memory_histograms", "report_text", "time_table"]
