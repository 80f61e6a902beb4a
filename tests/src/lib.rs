//! End-to-end tests for roomcast live under `tests/`.
