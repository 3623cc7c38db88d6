"""Continual updates of a registered model: the promote-or-refuse rule (``decision.py``) and
one update at a time per registry (``lock.py``). The ``dpokit update`` command that joins
training and evaluation into one loop is built on these (``run.py``), and so is a ranker's daily
update, ``dpokit rank update`` (``rank.py``)."""
