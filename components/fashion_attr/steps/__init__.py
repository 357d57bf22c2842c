"""The pipeline steps, each one module with one way in.

Steps (each ``run(config, ...) -> <Step>Result`` and ``main(argv) -> int``, see
:mod:`~fashion_attr.steps.contract`; the results are in :mod:`fashion_attr.results`):
:mod:`~fashion_attr.steps.preprocess`, :mod:`~fashion_attr.steps.train_gan`,
:mod:`~fashion_attr.steps.train_classifier`, :mod:`~fashion_attr.steps.evaluate`,
:mod:`~fashion_attr.steps.register`. How they are run in a pipeline (in this process,
under ``torchrun``, as a cluster job, from KFP) is :mod:`fashion_attr.orchestration`.
"""
