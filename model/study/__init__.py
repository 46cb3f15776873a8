"""The label-efficiency and convergence study (``med3d-train study``): inits × training fractions × seeds, each
cell an ordinary finetune run measured by ``evaluate`` on one fixed held-out split.

:mod:`~model.study.subsets` draws the patients (pure), :mod:`~model.study.grid` checks and plans the grid,
:mod:`~model.study.runner` runs the cells resumably, :mod:`~model.study.stats` and :mod:`~model.study.curves`
turn rows and curves into intervals and steps to target, :mod:`~model.study.report` and
:mod:`~model.study.figures` write the tables and figures.
"""
