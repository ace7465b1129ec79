"""Plain-Python components of the MESA pipeline: every step is a function you can call and test alone."""
