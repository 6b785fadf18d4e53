"""Response cache: canonical request keys, categories with budgets, Redis or in-process storage."""
