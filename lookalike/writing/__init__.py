"""Writing an index folder: a whole build (:mod:`~lookalike.writing.build`), live changes through
:class:`~lookalike.writing.writer.IndexWriter`, and the duplicate-photo groups both keep
(:mod:`~lookalike.writing.duplicates`)."""
