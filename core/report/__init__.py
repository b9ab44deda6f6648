"""Reporting: the run's report (markdown and HTML) and the comparison of two model folders.

Takes the records a run left in its store; hands on report.md, report.html and their figures.
"""
