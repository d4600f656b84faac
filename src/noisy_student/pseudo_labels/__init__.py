"""Pseudo labels: the teacher's predictions, the paper's filter-and-balance rule, the student's targets.

- :mod:`.targets`: softmax, top-k storage, dense soft/hard targets, ``selected.parquet`` -> the student's
  images, joined to the pool by id;
- :mod:`.shards`: the input shards ``predict`` reads (the tars of ``unlabeled.wds``) and the Parquet
  shards it writes (layout, content keys, metrics, listing);
- :mod:`.select`: filter-and-balance out of core over those shards, and its statistics;
- :mod:`.predict`: the teacher labelling the pool.

Import from the modules themselves: nothing is re-exported here.
"""
