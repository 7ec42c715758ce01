"""The release-day Locust scenario, by concern; `loadtest/locustfile.py` is the entry Locust loads.

`options` (the flags and the release file), `judges` (what each answer means), `resident` (the
`Resident` user), `received` (the booking ids clients were told about) and `verdict` (the run's
life, thresholds, `booking check` and the verdict line).
"""
