"""The report of a compile run, and what reads it.

- :mod:`.schema`: the report.json fields (``vitshrink.report/1``) and latency entry names;
- :mod:`.vit`, :mod:`.swin`: each family's ``structure`` section (per-block rows, :mod:`.rows`);
- :mod:`.write` (report.json + :mod:`.markdown` + :mod:`.plots`), :mod:`.io` (:func:`~.io.read_report`);
- :mod:`.diff`: ``vitshrink diff``, what changed between two reports.
"""
