"""One module per notebook, named as the notebook (`s03_dynamic_patching` for
`03_dynamic_patching.ipynb`). Only a stage's own notebook and its tests import it."""
