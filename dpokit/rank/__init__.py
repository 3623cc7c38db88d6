"""Ranking without a live system: a click simulator with known ground truth (``simulate``),
off-policy estimators of a ranker's click rate from logs (``ope``), logged-bandit records and
their conversion to item_ranker training records (``logs``), the Open Bandit reader (``obd``), and
the figures and rule of a ranker's daily update (``daily``; the update itself, which trains, is
``dpokit.update.rank``).
See docs/ranking.md."""
