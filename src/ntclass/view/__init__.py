"""Seeing the results: neuroglancer annotations, segment properties and states."""
