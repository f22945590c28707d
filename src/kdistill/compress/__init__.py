"""``kdistill compress``: a teacher and a deployment budget in, the best student inside it out (searched,
distilled, exported and re-measured). ``budget.py`` and ``space.py`` parse without torch; ``search.py`` runs it."""
