"""The planner: the cost model (`cost`, every formula in one place) and the predictions it
makes for a placement (`predict`).  It reads IR and knows nothing of passes: the place pass
asks it to compare placements, `ckec plan` and the run report ask it what a run should take."""
