"""The outbound data plane: httpx transports that route logical service names."""
