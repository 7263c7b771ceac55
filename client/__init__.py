"""A small command-line client for the studio API (``studio apps``, ``studio generate``)."""
