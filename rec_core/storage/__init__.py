"""Object storage: an S3-compatible store (``object_store``) and immutable versions published on it (``versions``)."""
