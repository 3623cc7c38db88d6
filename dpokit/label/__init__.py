"""``dpokit label``: a local page where people judge pairs of answers, saved as a votes file."""

from dpokit.label.candidates import Candidate, read_candidates
from dpokit.label.server import serve, start
from dpokit.label.session import Session, swapped, vote_for

__all__ = ["Candidate", "Session", "read_candidates", "serve", "start", "swapped", "vote_for"]
