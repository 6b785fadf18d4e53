"""Who is calling and what they may do: virtual keys, teams, limits and budgets."""
