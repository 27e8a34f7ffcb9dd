"""Curriculum schedules built from a difficulty table (`curate schedule`)."""
