"""Runs -> tidy frames -> stability metrics -> plots -> report (no torch; see docs/architecture.md §7).

Modules, leaves to root: ``load`` (run files -> tidy + runs frames), ``stability`` (collapse rule,
per-run metrics, IQM + bootstrap per arm), ``findings`` (the paper's conclusions as testable items),
``plots`` (panels on a given Axes), ``render`` (HTML / Markdown tables), ``report`` (CLI: one grid's
report) and ``index`` (CLI: an index of every report under a results folder).
"""
