"""The fairness load test: does a release give slow residents and bots their share of seats?

`python -m loadtest.fairness run --mode fcfs|window|lottery` (`__main__`) prepares one
release through the API, rushes it with a Locust crowd of the population (`crowd`: one user
per resident, normal, slow or bot), waits for the draw where there is one and runs
loadtest/fairness_check.py. `population` makes the residents (groups by a fixed seed, Zipf-like
wishes) and `plan` carries the release and the timings to every Locust process. Nothing here
imports Locust but `crowd`, which Locust loads with `-f`. Commands and figures:
loadtest/README.md, "Fairness".
"""
