"""The ``meshware`` command line."""
