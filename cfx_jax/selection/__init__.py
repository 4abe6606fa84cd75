"""Settings chosen by judges that need no ground truth (`judges.py`, `search.py`)."""

from cfx_jax.selection.search import candidates, choose, select

__all__ = ["candidates", "choose", "select"]
