"""Real inference workloads (torch) with their comparators and cheap substitutes."""
