"""Python clients (sync and async, on httpx) and the `engine-client` CLI (the service issue fills this in)."""
