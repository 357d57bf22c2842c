"""Pipeline steps: one module per step, each with ``main(argv) -> int`` and a run function.

The KFP components in ``pipelines/components.py`` are thin shells that import a
step module and call its run function; a developer or a test calls ``main``.
"""
