"""Bundled scenario files (YAML), found with importlib.resources."""
