"""Frozen, typed configuration resources (Istio formats) and the whole-mesh config."""
