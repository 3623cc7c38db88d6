"""Ranking without a live system: a click simulator with known ground truth (``simulate``),
off-policy estimators of a ranker's click rate from logs (``ope``), logged-bandit records and
their conversion to item_ranker training records (``logs``), and the Open Bandit reader (``obd``).
See docs/ranking.md."""
