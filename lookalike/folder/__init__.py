"""The index folder, the contract between writers and readers: its layout and durable files
(:mod:`~lookalike.folder.artifacts`), generations and segments (:mod:`~lookalike.folder.store`),
the typed settings a generation records (:mod:`~lookalike.folder.manifest`), what a stored row is
(:mod:`~lookalike.folder.rows`) and the fitted projection (:mod:`~lookalike.folder.projection`)."""
