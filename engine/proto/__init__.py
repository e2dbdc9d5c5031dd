"""Sans-IO protocol logic: bytes in, bytes out, time passed in. Imports no I/O module
(tests/unit/test_layering.py checks it)."""
