"""The feed API: a Litestar app that pages precomputed feeds and takes interactions (see app.py)."""
