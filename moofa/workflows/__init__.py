"""Workflows that tie the lower layers together for one command: the constraint sweep of
``eval_and_search.py --mode search`` (search, measurement, export, deploy), fine-tuning a found
subnet (``train.py --step finetune``) and ``--mode eval`` (docs/design.md#architecture)."""
