"""The data model and plumbing every layer uses: runs, qrels, items, tasks, io, devices, sharding."""
