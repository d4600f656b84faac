"""The report of a pipeline: tables, MLflow history, figures and the Markdown document.

- :mod:`.tables`: the tables as pure DataFrame functions (no files, no MLflow)
- :mod:`.inputs`: the metrics files and params as the frames the tables take
- :mod:`.history`: the runs and training curves in the MLflow store
- :mod:`.charts`: the report's PNG figures
- :mod:`.build`: :func:`~.build.write_report`, everything above into reports/report.md + PNGs

Nothing is imported here, so that the pure tables load without MLflow, torch or matplotlib.
"""
