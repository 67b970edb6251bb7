"""What runs write and read: the store, identities, folders, scores, tables, reports, run.json."""
