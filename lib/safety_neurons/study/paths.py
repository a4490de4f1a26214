"""The names of the stages' artifact folders (runs/<name>/artifacts/<stage>/), for the study modules
that read what one stage wrote on behalf of another. A stage's own module names its folder too."""

ALIGNMENT = "01_alignment"
CHANGE_SCORES = "02_change_scores"
DYNAMIC_PATCHING = "03_dynamic_patching"
TRANSFER_CAPABILITY = "04_transfer_capability"
STABILITY = "05_stability"
ALIGNMENT_TAX = "06_alignment_tax"
SAFEGUARD = "07_safeguard"
INTERPRETATION = "08_interpretation"
RECIPE_STUDY = "09_recipe_study"  # outside `make all`: run with --only 9
ARMS = "arms"  # the run-wide arm store (study/arms.py)
MEASURE_STORE = "measures"  # the run-wide store of per-prompt continuous measures (study/effects.py)
