"""Configuration: the typed model, its parsers, the Redis/file channel and the watcher."""
