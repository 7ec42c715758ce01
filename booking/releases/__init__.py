"""Releases: a set of courses opened in one mode, and the fair draw of the two draw modes.

- `service`: create and read releases (`/v1/releases`); which courses belong to which.
- `entries`: a resident's ranked wishes in a `window` or `lottery` release.
- `drawing`: freezing the entries at the close, the draw itself, applying its wins and waitlists
  to the ledger and the gate, the published files, and the closer that draws windows unprompted.
- `draw`: the draw's algorithm (`booking-draw/v1`) and its files, standard library only, shared
  with `booking verify-draw` so that anyone can re-run a draw from the published files (this
  package's `__init__` imports nothing, so the command loads no more than that module).
"""
