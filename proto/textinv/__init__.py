"""The textinv gRPC API, by version."""
