"""The model and its durable form: value types, the ledger that changes
them, the store that makes them survive a crash, and its file format."""
