"""wirepipe's benchmark suite: ``python -m bench`` (or ``./run bench``)."""
