"""Looking at an index and its catalogue: quality against labels (:mod:`~lookalike.analysis.evaluate`),
a label-learned projection (:mod:`~lookalike.analysis.tune`), catalogue statistics
(:mod:`~lookalike.analysis.stats`) and contact sheets (:mod:`~lookalike.analysis.sheet`)."""
