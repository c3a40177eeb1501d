"""Conversion edges between formats. Each edge is a function ``(source, destination, ...)``
that writes the destination atomically; ``shipyard convert`` (and its planner) chains them."""
