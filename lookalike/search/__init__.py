"""Answering queries over one generation: the back ends behind one contract
(:mod:`~lookalike.search.backends`), the filters a query carries (:mod:`~lookalike.search.filters`)
and the recommender that ties them together (:mod:`~lookalike.search.recommender`)."""
