"""textinv.v1: the .proto files and their generated Python stubs (regenerate: make protos)."""
