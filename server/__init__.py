"""The HTTP service: FastAPI app, schemas, metrics, settings, `engine-serve` (the service issue fills this in)."""
