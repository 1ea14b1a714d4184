"""Data shipped with cdissect-common (concept sets, reference results); no code."""
