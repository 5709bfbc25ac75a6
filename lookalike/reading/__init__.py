"""Reading a shop's catalogue and its photos: the table and its per-row problems
(:mod:`~lookalike.reading.catalog`), photo decoding, trimming and descriptors
(:mod:`~lookalike.reading.images`, :mod:`~lookalike.reading.jpeg`)."""
