"""Routing decisions without I/O: request matching, weighted and sticky picks, balancing."""
