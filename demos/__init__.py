"""Live demo loops (installed as ``edgeseg.demos``)."""
