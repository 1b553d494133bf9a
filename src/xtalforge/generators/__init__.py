"""Structure generators. A new one is one module plus one line in `registry.py`."""
