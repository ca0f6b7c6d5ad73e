"""For teaching: analysis tables, figures, the classroom demo and the notebooks (``notebook``: what a
notebook calls; ``runner``: running them headlessly)."""
