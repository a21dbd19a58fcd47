"""Chaos testing for shoal: the recorded history format, its checker and its report.

`history` defines what a chaos run records (one JSON line per operation),
`checker` decides from that record alone whether the run broke an invariant of
reliability-plan section 3, and `report` writes what it found for a human.
"""
