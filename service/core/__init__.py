"""The conversation domain: no protobuf, no database driver, no HTTP client."""
