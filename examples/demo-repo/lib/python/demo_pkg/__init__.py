"""A Python package imported from /cvmfs by the demo job."""

GREETING = "demo_pkg imported from the repository"
