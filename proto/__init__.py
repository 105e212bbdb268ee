"""The versioned gRPC contract of textinv (``proto/textinv/v1``) and its generated stubs."""
