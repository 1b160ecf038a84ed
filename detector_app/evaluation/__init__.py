"""``detector-app eval``: compare models on recorded videos against ground truth.

Modules: ``truth`` (MOT, COCO and fixture ground truth, checked against the video), ``models`` (what
each ``--model`` is and its unambiguous name), ``worker`` (one model on one video in its own process),
``metrics`` (pycocotools' COCOeval plus per-second presence), ``report`` (table, eval.json),
``plots`` (PR curves, timeline), ``expect`` (``replay --expect``), ``runner`` (the whole command).
"""
