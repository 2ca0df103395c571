"""The evidence harness behind ``benchmarks/compare_baselines.py``, one module per part:

* :mod:`evidence.presets`: the arms, the comparisons fixed before a run, the presets;
* :mod:`evidence.runner`: data files, the plan, the runs (real training processes) with checkpoints and resume;
* :mod:`evidence.store`: ``--collect`` / ``--restore`` and the check of reused evaluations;
* :mod:`evidence.analysis`: metrics, intervals (``benchmarks/_bootstrap.py``), the gate, the comparisons;
* :mod:`evidence.report`: ``results.json``, ``results.md`` and the figures;
* :mod:`evidence.cli`: the command line.

Imported with ``benchmarks/`` on ``sys.path`` (as ``python benchmarks/compare_baselines.py`` has it), where it also
finds ``synthetic_task.py`` and ``_bootstrap.py``.
"""
