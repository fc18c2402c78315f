"""Pictures of every stage of a run, and the one-page report that gathers them."""
