"""Load tests (Locust) and the benchmark driver."""
