"""The chaos suite: a seeded fault schedule against the real service, audited against ground truth."""
