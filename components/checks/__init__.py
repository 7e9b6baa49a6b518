"""Data validation: the Great Expectations suites and their results page."""
